"""calicoctl's resource verbs: apply, create, replace, delete, get, patch, label, version."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from tabby.cli.common import CLIError, console, datastore_parent, open_client, print_data

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def register(sub: argparse._SubParsersAction) -> None:
    parent = datastore_parent()
    for verb, help_text in (
        ("apply", "create or update resources from files"),
        ("create", "create resources (fails if any exists)"),
        ("replace", "replace existing resources (fails if any is missing)"),
    ):
        p = sub.add_parser(verb, help=help_text, parents=[parent])
        _add_filename(p, required=True)
        if verb == "create":
            p.add_argument("--skip-exists", action="store_true",
                           help="skip resources that already exist")
        p.set_defaults(func=_cmd_write, verb=verb)

    p = sub.add_parser("delete", help="delete resources by file or by kind and name",
                       parents=[parent])
    _add_filename(p, required=False)
    p.add_argument("kind", nargs="?")
    p.add_argument("names", nargs="*")
    p.add_argument("-n", "--namespace")
    p.add_argument("--skip-not-exists", action="store_true",
                   help="do not fail when a resource does not exist")
    p.set_defaults(func=_cmd_delete)

    p = sub.add_parser("get", help="show resources", parents=[parent])
    p.add_argument("kind")
    p.add_argument("names", nargs="*")
    ns = p.add_mutually_exclusive_group()
    ns.add_argument("-n", "--namespace")
    ns.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", default="table",
                   choices=("table", "ps", "wide", "yaml", "json", "name"))
    p.set_defaults(func=_cmd_get)

    p = sub.add_parser("patch", help="merge-patch one resource", parents=[parent])
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-p", "--patch", required=True, help="JSON or YAML merge patch")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=_cmd_patch)

    p = sub.add_parser("label", help="add, change or remove a label", parents=[parent])
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("label", nargs="?", help="KEY=VALUE")
    p.add_argument("--remove", metavar="KEY", help="remove this label")
    p.add_argument("--overwrite", action="store_true", help="change an existing label")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser("version", help="client version and datastore", parents=[parent])
    p.set_defaults(func=_cmd_version)


def _add_filename(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("-f", "--filename", action="append", required=required, metavar="FILE",
                   help="a file, a directory of manifests, or - for stdin (repeatable)")


# -- reading manifests -------------------------------------------------------------------
def load_manifests(paths: list[str]) -> list[Any]:
    """Every document of every file, all validated before anything is written."""
    from tabby.resources import ResourceError, parse_documents

    resources: list[Any] = []
    for path in paths:
        for source, text in _read_sources(path):
            try:
                resources.extend(parse_documents(text, source))
            except ResourceError as exc:
                raise CLIError(str(exc)) from None
    if not resources:
        raise CLIError(f"-f {' '.join(paths)}: no resources found")
    return resources


def _read_sources(path: str) -> list[tuple[str, str]]:
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in MANIFEST_SUFFIXES and f.is_file())
        if not files:
            raise CLIError(f"-f {path}: directory has no .yaml, .yml or .json files")
        return [(str(f), f.read_text()) for f in files]
    try:
        return [(path, p.read_text())]
    except OSError as exc:
        raise CLIError(f"-f {path}: {exc.strerror}") from None


def _describe(res: Any) -> str:
    return str(res.describe())


# -- verbs -------------------------------------------------------------------------------
def _cmd_write(args: argparse.Namespace) -> int:
    from tabby.datastore import AlreadyExists, Conflict, NotFound

    resources = load_manifests(args.filename)
    verb = args.verb
    with open_client(args) as client:
        # Check what we can before the first write, so a doomed batch writes nothing.
        todo = []
        for res in resources:
            present = client.exists(res)
            if verb == "create" and present:
                if args.skip_exists:
                    continue
                raise CLIError(f"{_describe(res)} already exists; nothing was written")
            if verb == "replace" and not present:
                raise CLIError(f"{_describe(res)} does not exist; nothing was written")
            todo.append(res)
        action = {"create": client.create, "replace": client.update, "apply": client.apply}[verb]
        done = 0
        for res in todo:
            try:
                action(res)
            except (AlreadyExists, Conflict, NotFound) as exc:
                raise CLIError(f"{exc} ({done} of {len(todo)} resource(s) written)") from None
            done += 1
    past = {"apply": "applied", "create": "created", "replace": "replaced"}[verb]
    console.print(f"Successfully {past} {done} resource(s)", highlight=False)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from tabby.datastore import Conflict, NotFound
    from tabby.resources import ResourceError, kind_info

    targets: list[tuple[Any, str, str | None, str | None]] = []
    if args.filename:
        if args.kind:
            raise CLIError("delete: give either -f FILE or KIND NAME, not both")
        for res in load_manifests(args.filename):
            targets.append((res.kind_info(), res.metadata.name, res.metadata.namespace,
                            res.metadata.resourceVersion))
    else:
        if not args.kind or not args.names:
            raise CLIError("delete: give -f FILE, or KIND and NAME")
        try:
            info = kind_info(args.kind)
        except ResourceError as exc:
            raise CLIError(str(exc)) from None
        targets = [(info, name, args.namespace, None) for name in args.names]
    done = 0
    with open_client(args) as client:
        for kind, name, ns, rv in targets:
            try:
                client.delete(kind, name, ns, rv)
                done += 1
            except NotFound as exc:
                if not args.skip_not_exists:
                    raise CLIError(f"{exc} ({done} resource(s) deleted)") from None
            except Conflict as exc:
                raise CLIError(f"{exc} ({done} resource(s) deleted)") from None
    console.print(f"Successfully deleted {done} resource(s)", highlight=False)
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    from tabby.datastore import NotFound
    from tabby.resources import ResourceError, kind_info, to_dict

    try:
        info = kind_info(args.kind)
    except ResourceError as exc:
        raise CLIError(str(exc)) from None
    namespace = None if args.all_namespaces else args.namespace
    if info.namespaced and not args.all_namespaces and not namespace:
        namespace = "default"
    with open_client(args) as client:
        if args.names:
            items = []
            for name in args.names:
                try:
                    items.append(client.get(info, name, namespace))
                except NotFound as exc:
                    raise CLIError(str(exc)) from None
        else:
            items = client.list(info, namespace)
    if args.output in ("yaml", "json"):
        docs = [to_dict(r) for r in items]
        if len(docs) == 1 and args.names:
            print_data(docs[0], args.output)
        else:
            print_data({"apiVersion": info.api_version, "kind": "List", "items": docs,
                        "metadata": {}}, args.output)
    elif args.output == "name":
        for r in items:
            print(f"{info.plural}/{r.metadata.name}")
    else:
        _print_table(info, items, wide=args.output == "wide",
                     show_ns=info.namespaced and args.all_namespaces)
    return 0


def _print_table(info: Any, items: list[Any], wide: bool, show_ns: bool) -> None:
    columns = table_columns(info.kind if info.api_version.startswith("projectcalico")
                            else info.display, wide)
    table = Table(box=None, pad_edge=False, header_style="bold")
    if show_ns:
        table.add_column("NAMESPACE")
    for header, _ in columns:
        table.add_column(header)
    for r in items:
        row = [r.metadata.namespace or ""] if show_ns else []
        row += [fn(r) for _, fn in columns]
        table.add_row(*row)
    console.print(table)


def _join(values: Any) -> str:
    return ",".join(str(v) for v in values or [])


def _selector(r: Any) -> str:
    return r.spec.selector or "all()"


def _labels(r: Any) -> str:
    return _join(f"{k}={v}" for k, v in sorted((r.metadata.labels or {}).items()))


# Columns per kind for `get` tables: (header, value), with the extra ones shown by -o wide.
COLUMNS: dict[str, tuple[list[tuple[str, Any]], list[tuple[str, Any]]]] = {
    "IPPool": ([("NAME", lambda r: r.name), ("CIDR", lambda r: r.spec.cidr),
                ("SELECTOR", lambda r: r.spec.nodeSelector)],
               [("BLOCKSIZE", lambda r: str(r.spec.blockSize)),
                ("IPIP", lambda r: r.spec.ipipMode), ("VXLAN", lambda r: r.spec.vxlanMode),
                ("NAT", lambda r: str(r.spec.natOutgoing).lower()),
                ("DISABLED", lambda r: str(bool(r.spec.disabled)).lower())]),
    "Node": ([("NAME", lambda r: r.name)],
             [("ASN", lambda r: str((r.spec.bgp and r.spec.bgp.asNumber) or "(64512)")),
              ("IPV4", lambda r: (r.spec.bgp and r.spec.bgp.ipv4Address) or ""),
              ("IPV6", lambda r: (r.spec.bgp and r.spec.bgp.ipv6Address) or "")]),
    "WorkloadEndpoint": ([("WORKLOAD", lambda r: r.spec.workload or ""),
                          ("NODE", lambda r: r.spec.node or ""),
                          ("NETWORKS", lambda r: _join(r.spec.ipNetworks)),
                          ("INTERFACE", lambda r: r.spec.interfaceName or "")],
                         [("NAME", lambda r: r.name), ("PROFILES", lambda r: _join(r.spec.profiles)),
                          ("LABELS", _labels)]),
    "HostEndpoint": ([("NAME", lambda r: r.name), ("NODE", lambda r: r.spec.node or "")],
                     [("INTERFACE", lambda r: r.spec.interfaceName or ""),
                      ("IPS", lambda r: _join(r.spec.expectedIPs)),
                      ("PROFILES", lambda r: _join(r.spec.profiles))]),
    "NetworkPolicy": ([("NAME", lambda r: r.name)],
                      [("TIER", lambda r: r.spec.tier), ("ORDER", lambda r: str(r.spec.order or "")),
                       ("SELECTOR", _selector)]),
    "GlobalNetworkPolicy": ([("NAME", lambda r: r.name)],
                            [("TIER", lambda r: r.spec.tier),
                             ("ORDER", lambda r: str(r.spec.order or "")),
                             ("SELECTOR", _selector)]),
    "NetworkSet": ([("NAME", lambda r: r.name)], [("NETS", lambda r: _join(r.spec.nets))]),
    "GlobalNetworkSet": ([("NAME", lambda r: r.name)], [("NETS", lambda r: _join(r.spec.nets))]),
    "Tier": ([("NAME", lambda r: r.name), ("ORDER", lambda r: str(r.spec.order or ""))],
             [("DEFAULTACTION", lambda r: r.spec.defaultAction or "")]),
    "BGPPeer": ([("NAME", lambda r: r.name), ("PEERIP", lambda r: r.spec.peerIP or ""),
                 ("NODE", lambda r: r.spec.node or r.spec.nodeSelector or "(global)"),
                 ("ASN", lambda r: str(r.spec.asNumber or ""))],
                [("FILTERS", lambda r: _join(r.spec.filters))]),
    "BGPFilter": ([("NAME", lambda r: r.name)],
                  [(f"{d.upper()}", lambda r, d=d: str(len(getattr(r.spec, d) or [])))
                   for d in ("exportV4", "importV4", "exportV6", "importV6")]),
}


def table_columns(kind: str, wide: bool) -> list[tuple[str, Any]]:
    base, extra = COLUMNS.get(kind, ([("NAME", lambda r: r.name)], [("LABELS", _labels)]))
    return base + extra if wide else base


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _read_modify_write(args: argparse.Namespace, change: Any) -> None:
    """Get, change the dict form, validate, CAS-update; retried on a concurrent change."""
    from tabby.datastore import Conflict, NotFound
    from tabby.resources import ResourceError, from_dict, to_dict

    with open_client(args) as client:
        for _ in range(5):
            try:
                current = client.get(args.kind, args.name, args.namespace)
            except (NotFound, ResourceError) as exc:
                raise CLIError(str(exc)) from None
            data = change(to_dict(current))
            data.setdefault("metadata", {})["resourceVersion"] = current.metadata.resourceVersion
            try:
                updated = from_dict(data, where=f"{args.kind} {args.name}")
            except ResourceError as exc:
                raise CLIError(str(exc)) from None
            try:
                client.update(updated)
                return
            except Conflict:
                continue
        raise CLIError(f"{args.kind} {args.name}: kept changing under us; try again")


def _cmd_patch(args: argparse.Namespace) -> int:
    import yaml

    try:
        patch = yaml.safe_load(args.patch)
    except yaml.YAMLError as exc:
        raise CLIError(f"--patch: not valid JSON or YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(patch, dict):
        raise CLIError(f"--patch: must be an object, got {args.patch!r}")
    for field in ("apiVersion", "kind"):
        if field in patch:
            raise CLIError(f"--patch: {field} cannot be changed")
    meta = patch.get("metadata") or {}
    for field in ("name", "namespace"):
        if field in meta:
            raise CLIError(f"--patch: metadata.{field} cannot be changed")
    _read_modify_write(args, lambda data: _merge_patch(data, patch))
    console.print(f"Successfully patched 1 '{args.kind}' resource", highlight=False)
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    if bool(args.label) == bool(args.remove):
        raise CLIError("label: give either KEY=VALUE or --remove KEY")
    if args.label:
        key, sep, value = args.label.partition("=")
        if not sep or not key:
            raise CLIError(f"label: expected KEY=VALUE, got {args.label!r}")

    def change(data: dict[str, Any]) -> dict[str, Any]:
        labels = dict(data.get("metadata", {}).get("labels") or {})
        if args.remove:
            if args.remove not in labels:
                raise CLIError(f"label: {args.kind} {args.name} has no label {args.remove!r}")
            del labels[args.remove]
        else:
            if key in labels and labels[key] != value and not args.overwrite:
                raise CLIError(
                    f"label: {key!r} is already {labels[key]!r}; use --overwrite to change it"
                )
            labels[key] = value
        data["metadata"]["labels"] = labels
        return data

    _read_modify_write(args, change)
    verb = "removed" if args.remove else "labeled"
    console.print(f"Successfully {verb} {args.kind} {args.name}", highlight=False)
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    import tabby

    with open_client(args) as client:
        info = {"clientVersion": tabby.__version__,
                "datastore": type(client.ds).__name__,
                "revision": client.ds.revision()}
    console.print(json.dumps(info, indent=2), highlight=False)
    return 0
