"""Resource errors: one line that names the document, the object, the field and the value.

Validators deep inside the models raise `FieldError` (a ValueError that can carry a
sub-path, for cross-field rules checked at model level); pydantic wraps those in a
ValidationError, and `from_validation_error` turns the first error into a
`ResourceError` such as

    document 3 (IPPool pool-a): spec.cidr: invalid CIDR "10.0.0.0/33"
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


class ResourceError(ValueError):
    """A manifest or resource is invalid. str() is one line, fit for a CLI error."""


class FieldError(ValueError):
    """A validation failure at `path` below the model whose validator raised it."""

    def __init__(self, path: str | Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.path: tuple[str | int, ...] = (path,) if isinstance(path, str) else tuple(path)
        self.message = message


def show(value: Any, limit: int = 80) -> str:
    """A value as it would appear in a manifest: JSON for scalars and short collections."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def format_loc(loc: Sequence[str | int]) -> str:
    """('spec', 'ingress', 0, 'action') -> 'spec.ingress[0].action'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _strip_union_tags(loc: Sequence[str | int]) -> list[str | int]:
    # pydantic adds the union member / validator name to locations ("int", "str",
    # "function-after[...]"); they mean nothing to a manifest author.
    return [
        p
        for p in loc
        if not (isinstance(p, str) and (p in {"int", "str", "float", "bool", "none"} or "[" in p))
    ]


def _model_at(cls: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found by following `loc` down from `cls` (best effort)."""
    for part in loc:
        if cls is None:
            return None
        if isinstance(part, int):
            continue
        field = next(
            (f for n, f in cls.model_fields.items() if n == part or f.alias == part),
            None,
        )
        if field is None:
            return None
        cls = _first_model(field.annotation)
    return cls


def _first_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _first_model(typing.get_args(tp)[0])
    if origin in (list, tuple, typing.Union, types.UnionType, dict):
        for arg in typing.get_args(tp):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def _field_names(cls: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in cls.model_fields.items()]


def describe_error(err: Any, root: type[BaseModel] | None = None) -> tuple[str, str]:
    """(field path, message) for one pydantic error dict."""
    loc = _strip_union_tags(err.get("loc", ()))
    etype = err.get("type", "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    exc = ctx.get("error")
    if isinstance(exc, FieldError):
        return format_loc([*loc, *exc.path]), exc.message
    if isinstance(exc, ValueError) and etype in ("value_error", "assertion_error"):
        return format_loc(loc), str(exc)
    if etype == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        msg = f"unknown field {show(name)}"
        model = _model_at(root, loc[:-1]) if root is not None else None
        if model is not None:
            close = difflib.get_close_matches(name, _field_names(model), n=1, cutoff=0.6)
            if not close:
                close = [f for f in _field_names(model) if f.lower() == name.lower()]
            if close:
                msg += f' (did you mean "{close[0]}"?)'
        return format_loc(loc), msg
    if etype == "missing":
        return format_loc(loc), "required field missing"
    if etype == "literal_error":
        want = str(ctx.get("expected", "")).replace("'", "")
        return format_loc(loc), f"invalid value {show(value)} (want {want})"
    if etype.startswith("int_"):
        return format_loc(loc), f"expected an integer, got {show(value)}"
    if etype.startswith("float_"):
        return format_loc(loc), f"expected a number, got {show(value)}"
    if etype.startswith("bool_"):
        return format_loc(loc), f"expected true or false, got {show(value)}"
    if etype.startswith("string_"):
        if etype == "string_type":
            return format_loc(loc), f"expected a string, got {show(value)}"
        return format_loc(loc), f"{err.get('msg', 'invalid string')}, got {show(value)}"
    if etype in ("list_type", "tuple_type", "set_type"):
        return format_loc(loc), f"expected a list, got {show(value)}"
    if etype in ("dict_type", "model_type", "model_attributes_type"):
        return format_loc(loc), f"expected a mapping, got {show(value)}"
    if etype in ("too_long", "too_short"):
        return format_loc(loc), f"{err.get('msg', etype)}"
    msg = str(err.get("msg", etype))
    return format_loc(loc), f"{msg}, got {show(value)}"


def from_validation_error(
    exc: ValidationError, where: str, root: type[BaseModel] | None = None
) -> ResourceError:
    """A one-line ResourceError for the first error in `exc`; counts the rest."""
    errors = exc.errors()
    if not errors:
        return ResourceError(f"{where}: invalid")
    first = errors[0]
    if first.get("type") == "missing":
        # A misspelt field shows up as "missing" plus "unknown"; the unknown one explains it.
        parent = tuple(first.get("loc", ()))[:-1]
        for err in errors[1:]:
            if err.get("type") == "extra_forbidden" and tuple(err.get("loc", ()))[:-1] == parent:
                first = err
                break
    path, msg = describe_error(first, root)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    head = f"{where}: {path}: " if path else f"{where}: "
    return ResourceError(f"{head}{msg}{more}")
