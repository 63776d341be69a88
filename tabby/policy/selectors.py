"""How policy and rule selectors combine with namespaces and service accounts.

The one place where v3 selectors become the selectors that are matched against endpoint
labels, as Calico's v3 -> v1 update processors do it:

* a namespaced policy's selector is ANDed with ``projectcalico.org/namespace == '<ns>'``;
* a global policy's ``namespaceSelector`` gets every label prefixed with ``pcns.`` (namespace
  labels reach endpoints through the ``kns.<ns>`` profile) and its ``all()`` means "any
  namespaced endpoint"; ``serviceAccountSelector`` likewise with ``pcsa.``;
* a rule's entity selector is scoped to the policy's namespace, or to the namespaces its
  ``namespaceSelector`` picks, as soon as any selector field is used; ``global()`` there means
  "only non-namespaced things" (host endpoints, global network sets).

Everything works on selector trees, so a quoted ``"all()"`` value is never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabby.policy.errors import PolicyError
from tabby.selector import Selector, SelectorError, and_, parse
from tabby.selector.ast import Global, Has, LabelEq, LabelIn, Not

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
LABEL_NAME = "projectcalico.org/name"
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
NAMESPACE_PROFILE_PREFIX = "kns."
SERVICE_ACCOUNT_PROFILE_PREFIX = "ksa."

_HAS_NAMESPACE = Selector(Has(LABEL_NAMESPACE))
_NOT_NAMESPACED = Selector(Not(Has(LABEL_NAMESPACE)))
_HAS_SERVICE_ACCOUNT = Selector(Has(LABEL_SERVICE_ACCOUNT))


@dataclass(frozen=True)
class Scope:
    """Where a rule's policy lives: namespace "" for global policies and profiles."""

    namespace: str = ""


def parse_selector(text: str, where: str) -> Selector:
    """Parse selector text; a bad selector raises ValueError naming the field and value."""
    try:
        return parse(text.strip(" \t\r\n"))
    except SelectorError as exc:
        raise PolicyError(f"{where}: {exc}") from None


def namespace_clause(namespace: str) -> Selector:
    return Selector(LabelEq(LABEL_NAMESPACE, namespace))


def prefixed(sel: Selector, prefix: str) -> Selector:
    return sel.map_labels(lambda key: prefix + key)


def _check_no_global(sel: Selector, where: str) -> None:
    if sel.uses_global():
        raise PolicyError(f"{where}: global() is not allowed here (selector {str(sel)!r})")


def policy_selector(
    *,
    namespace: str,
    selector: str = "",
    namespace_selector: str = "",
    service_account_selector: str = "",
    where: str = "spec",
) -> Selector:
    """The endpoint selector of a NetworkPolicy (namespace != "") or GlobalNetworkPolicy."""
    sel = parse_selector(selector, f"{where}.selector") if selector.strip() else None
    if sel is not None:
        _check_no_global(sel, f"{where}.selector")
    if namespace:
        ns = namespace_clause(namespace)
        sel = ns if sel is None else and_(sel, ns)
        if service_account_selector.strip():
            sa = _prefixed_field(service_account_selector, SERVICE_ACCOUNT_LABEL_PREFIX,
                                 f"{where}.serviceAccountSelector")
            sel = and_(sel, sa)
        return sel
    if namespace_selector.strip():
        ns_sel = _prefixed_field(namespace_selector, NAMESPACE_LABEL_PREFIX,
                                 f"{where}.namespaceSelector")
        # Calico rewrites all() in the whole combined selector, not just the namespace part.
        sel = (ns_sel if sel is None else and_(sel, ns_sel)).replace_all(_HAS_NAMESPACE)
    if service_account_selector.strip():
        sa = _prefixed_field(service_account_selector, SERVICE_ACCOUNT_LABEL_PREFIX,
                             f"{where}.serviceAccountSelector")
        sel = (sa if sel is None else and_(sel, sa)).replace_all(_HAS_SERVICE_ACCOUNT)
    return sel if sel is not None else parse("all()")


def _prefixed_field(text: str, prefix: str, where: str) -> Selector:
    sel = parse_selector(text, where)
    _check_no_global(sel, where)
    return prefixed(sel, prefix)


def service_account_selector(accounts: Mapping[str, Any], where: str) -> Selector | None:
    """A rule's serviceAccounts match: names as an `in` set, selector with `pcsa.` labels."""
    sel: Selector | None = None
    text = accounts.get("selector") or ""
    if text.strip():
        sel = _prefixed_field(text, SERVICE_ACCOUNT_LABEL_PREFIX, f"{where}.serviceAccounts.selector")
    names: Sequence[str] = accounts.get("names") or ()
    if names:
        in_names = Selector(LabelIn(LABEL_SERVICE_ACCOUNT, tuple(names)))
        sel = in_names if sel is None else and_(sel, in_names)
    return sel


def rule_namespace_selector(text: str, where: str) -> Selector:
    """A rule's namespaceSelector as a selector over endpoint labels."""
    sel = parse_selector(text, where)
    if isinstance(sel.root, Global):
        # Only non-namespaced endpoints and global network sets.
        return _NOT_NAMESPACED
    if sel.uses_global():
        raise PolicyError(f"{where}: global() must be the whole selector, got {text!r}")
    return prefixed(sel, NAMESPACE_LABEL_PREFIX).replace_all(_HAS_NAMESPACE)


def entity_selector(
    *,
    selector: str,
    namespace_selector: str,
    service_accounts: Mapping[str, Any] | None,
    not_selector: str,
    scope: Scope,
    where: str,
) -> Selector | None:
    """The positive selector of an EntityRule, or None when the rule has no selector part.

    The namespace clause is added only if some selector field (selector, serviceAccounts,
    notSelector or namespaceSelector) is present: a nets/ports-only rule stays unscoped.
    """
    ns_sel: Selector | None = None
    if namespace_selector.strip():
        ns_sel = rule_namespace_selector(namespace_selector, f"{where}.namespaceSelector")
    elif scope.namespace:
        ns_sel = namespace_clause(scope.namespace)

    parts: list[Selector] = []
    if service_accounts:
        sa = service_account_selector(service_accounts, where)
        if sa is not None:
            parts.append(sa)
    if selector.strip():
        ep = parse_selector(selector, f"{where}.selector")
        _check_no_global(ep, f"{where}.selector")
        parts.append(ep)
    sel = None if not parts else parts[0] if len(parts) == 1 else and_(*parts)

    if ns_sel is not None and (sel is not None or not_selector.strip()
                               or namespace_selector.strip()):
        sel = ns_sel if sel is None else and_(ns_sel, sel)
    return sel
