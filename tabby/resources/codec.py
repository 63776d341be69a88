"""Manifests in and out: multi-document YAML, JSON, `kind: List`; Calico-shaped output.

`parse_documents` validates every document before returning, so a caller that applies
nothing unless all are good just calls it once. Documents are numbered from 1 in file
order; items of a List are "document N item M".

The YAML loader is YAML 1.1 as Kubernetes reads it, minus two surprises: timestamps stay
strings and `80:59` stays a string (PyYAML would read a base-60 integer); duplicate
keys are an error rather than last-one-wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ResourceError, from_validation_error, show
from .meta import Resource
from .registry import kind_for

_LIST_API_VERSIONS = ("v1", "projectcalico.org/v3")


class _Loader(yaml.SafeLoader):
    """SafeLoader without timestamp and base-60 resolution, rejecting duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_DROPPED_TAGS = {
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1 ints and floats as PyYAML reads them, minus the base-60 forms ("80:59").
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Block style, keys in model order, indented lists like kubectl prints them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _load_yaml(text: str, source: str) -> Iterator[Any]:
    try:
        yield from yaml.load_all(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ResourceError(f"{source}: invalid YAML{where}: {problem}") from None


def _load(text: str, source: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            # Flow-style YAML also starts with "{"; fall back before reporting JSON errors.
            try:
                return [d for d in _load_yaml(text, source)]
            except ResourceError:
                raise ResourceError(
                    f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
                ) from None
        return data if isinstance(data, list) else [data]
    return list(_load_yaml(text, source))


def _label(d: dict[str, Any]) -> str:
    kind = d.get("kind")
    meta = d.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    if not isinstance(kind, str):
        return ""
    if isinstance(name, str) and name:
        full = f"{ns}/{name}" if isinstance(ns, str) and ns else name
        if len(full) > 80:
            full = full[:77] + "..."
        return f" ({kind} {full})"
    return f" ({kind})"


def from_dict(d: Any, where: str = "document 1") -> Resource:
    """Validate one manifest object into its kind's model; ResourceError if invalid."""
    if not isinstance(d, dict):
        raise ResourceError(
            f"{where}: expected a mapping with apiVersion and kind, got {show(d, 40)}"
        )
    label = _label(d)
    for fld in ("apiVersion", "kind"):
        if not isinstance(d.get(fld), str) or not d.get(fld):
            raise ResourceError(f"{where}{label}: {fld}: required field missing")
    try:
        info = kind_for(d["apiVersion"], d["kind"])
    except ResourceError as exc:
        raise ResourceError(f"{where}{label}: {exc}") from None
    try:
        return info.cls.model_validate(d)
    except ValidationError as exc:
        raise from_validation_error(exc, f"{where}{label}", info.cls) from None


def _expand(doc: Any, where: str) -> Iterator[tuple[Any, str]]:
    # A `kind: List` (or `IPPoolList` etc.) holds items; each item may omit its kind.
    if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List"):
        items = doc.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ResourceError(
                f"{where} ({doc['kind']}): items: expected a list, got {show(items, 40)}"
            )
        item_kind = doc["kind"][: -len("List")]
        for j, item in enumerate(items, 1):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"apiVersion": doc.get("apiVersion"), "kind": item_kind, **item}
            yield item, f"{where} item {j}"
        return
    yield doc, where


def parse_documents(text: str, source: str = "<stdin>") -> list[Resource]:
    """Every resource in a YAML or JSON manifest, all validated; raises on the first bad one.

    Errors read "document 3 (IPPool pool-a): spec.cidr: ..." and, when `source` is not
    "<stdin>", start with "<source>: ".
    """
    prefix = "" if source == "<stdin>" else f"{source}: "
    out: list[Resource] = []
    for i, doc in enumerate(_load(text, source), 1):
        if doc is None:
            continue  # an empty document, e.g. after a trailing "---"
        for item, where in _expand(doc, f"{prefix}document {i}"):
            out.append(from_dict(item, where))
    return out


def to_dict(res: Resource) -> dict[str, Any]:
    """The resource as Calico prints it: JSON types, unset (None) fields left out."""
    return res.model_dump(mode="json", exclude_none=True, by_alias=True)


def _as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def dump_yaml(resources: Iterable[Resource], as_list: bool | None = None) -> str:
    """YAML text: one document per resource, or one `kind: List` if `as_list`.

    `as_list=None` prints a single resource as itself and anything else as a List.
    """
    dicts = [to_dict(r) for r in resources]
    if as_list is None:
        as_list = len(dicts) != 1
    docs: list[Any] = [_as_list(dicts)] if as_list else dicts
    return yaml.dump_all(
        docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def dump_json(resources: Iterable[Resource], as_list: bool | None = None) -> str:
    """JSON text: one object, or a `kind: List` (the default for other than one resource)."""
    dicts = [to_dict(r) for r in resources]
    if as_list is None:
        as_list = len(dicts) != 1
    data: Any = _as_list(dicts) if as_list else dicts[0]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
