"""BGPFilter resources as BIRD functions (pure; render.py places them in bird.conf).

Calico's semantics: a BGPFilter holds ordered rule lists (importV4, exportV4, importV6,
exportV6); the first rule that matches a route decides (`accept;` / `reject;`). A route no
rule matches goes on to the next filter the BGPPeer lists and finally to the default
import/export. One BIRD function per (filter, direction, family) that some session uses does
exactly that: BIRD's `accept` and `reject` end the whole filter even inside a function, and a
function that ends without one returns to the caller, which goes on.

    function 'tabby_bgpfilter_my-filter_import4'()
    {
      if net ~ [ 55.0.0.0/16{30,32} ] then accept;  # rule 1
      if net !~ 44.0.0.0/16 then reject;  # rule 2
    }

A rule's conditions all have to hold:

    cidr + matchOperator  Equal: `net = C`, NotEqual: `net != C`, In: `net ~ C` (C itself or
                          any prefix inside it), NotIn: `net !~ C`
    prefixLength          In/NotIn: the prefix pattern `[ C{min,max} ]` (min defaults to C's
                          length, max to 32/128); Equal/NotEqual: the model refuses a range
                          that excludes C's own length, so nothing is added
    source: RemotePeers   `source = RTS_BGP`: the route was learned from a BGP peer
    interface             `ifname ~ "pattern"` (`*` is a wildcard)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from tabby.resources import BGPFilter, BGPFilterRule

DIRECTIONS = ("import", "export")
# BIRD refuses symbols longer than 64 characters; names may have 253.
_SYMBOL_MAX = 64
_PREFIX = "tabby_bgpfilter_"


def function_name(name: str, direction: str, version: int) -> str:
    """The quoted BIRD symbol of one filter's rules for one direction and family. Quoted,
    because resource names have '-' and '.'; shortened with a hash when too long."""
    suffix = f"_{direction}{version}"
    if len(_PREFIX) + len(name) + len(suffix) > _SYMBOL_MAX:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        keep = _SYMBOL_MAX - len(_PREFIX) - len(suffix) - len(digest) - 1
        name = f"{name[:keep]}_{digest}"
    return f"'{_PREFIX}{name}{suffix}'"


def rule_condition(rule: BGPFilterRule) -> str | None:
    """The BIRD condition under which `rule` matches; None: it matches every route."""
    conds: list[str] = []
    if rule.cidr is not None and rule.matchOperator is not None:
        net = rule.network()
        if rule.matchOperator in ("Equal", "NotEqual"):
            conds.append(f"net {'=' if rule.matchOperator == 'Equal' else '!='} {net}")
        else:
            lo, hi = rule.length_range()
            # A prefix shorter than the CIDR cannot lie inside it: start the range there.
            lo = max(lo, net.prefixlen)
            if (lo, hi) == (net.prefixlen, net.max_prefixlen):
                pattern = str(net)
            else:
                pattern = f"[ {net}{{{lo},{hi}}} ]"
            conds.append(f"net {'~' if rule.matchOperator == 'In' else '!~'} {pattern}")
    if rule.source == "RemotePeers":
        conds.append("source = RTS_BGP")
    if rule.interface is not None:
        # The model allows only [a-zA-Z0-9_.*-]: nothing that could end a BIRD string.
        conds.append(f'ifname ~ "{rule.interface}"')
    if not conds:
        return None
    return " && ".join(f"({c})" for c in conds) if len(conds) > 1 else conds[0]


def function_lines(filt: BGPFilter, direction: str, version: int) -> list[str]:
    """The BIRD function of `filt`'s rules for one direction and family (no indentation
    beyond the function's own)."""
    field = f"{direction}V{version}"
    lines = [
        f'# BGPFilter "{filt.metadata.name}" {field}: the first matching rule decides.',
        f"function {function_name(filt.metadata.name, direction, version)}()",
        "{",
    ]
    for i, rule in enumerate(filt.spec.rules(direction, version), 1):
        action = "accept" if rule.action == "Accept" else "reject"
        cond = rule_condition(rule)
        if cond is None:
            lines.append(f"  {action};  # rule {i}: no condition, every route")
        else:
            lines.append(f"  if {cond} then {action};  # rule {i}")
    lines.append("}")
    return lines


@dataclass(frozen=True)
class FilterUse:
    """One BGPFilter's rules for one direction of one family, used by some session."""

    name: str
    direction: str
    version: int

    @property
    def function(self) -> str:
        return function_name(self.name, self.direction, self.version)


def has_rules(filters: dict[str, BGPFilter], name: str, direction: str, version: int) -> bool:
    filt = filters.get(name)
    return filt is not None and bool(filt.spec.rules(direction, version))


def uses(filters: dict[str, BGPFilter], names: Iterable[str], direction: str,
         version: int) -> list[FilterUse]:
    """The functions a session calls for `direction`, in the BGPPeer's order: filters
    with no rules for it are skipped (they could only fall through)."""
    return [FilterUse(n, direction, version) for n in names
            if has_rules(filters, n, direction, version)]
