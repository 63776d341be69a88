"""Selector combination: the canonical selectors Calico's update processors produce."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.policy.errors import PolicyError
from tabby.policy.rules import compile_rule
from tabby.policy.selectors import Scope, entity_selector, policy_selector


def ent(scope: str = "", **fields: Any) -> str | None:
    sel = entity_selector(
        selector=fields.get("selector", ""),
        namespace_selector=fields.get("namespaceSelector", ""),
        service_accounts=fields.get("serviceAccounts"),
        not_selector=fields.get("notSelector", ""),
        scope=Scope(scope),
        where="rule",
    )
    return None if sel is None else str(sel)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(namespace="x", selector="app == 'web'"),
     '(app == "web" && projectcalico.org/namespace == "x")'),
    (dict(namespace="x"), 'projectcalico.org/namespace == "x"'),
    (dict(namespace="x", selector="a == 'b' || c == 'd'"),
     '((a == "b" || c == "d") && projectcalico.org/namespace == "x")'),
    (dict(namespace="x", selector="app == 'web'", service_account_selector="role == 'fe'"),
     '((app == "web" && projectcalico.org/namespace == "x") && pcsa.role == "fe")'),
    # NetworkPolicy: the service-account all() is not rewritten (only GNP does that).
    (dict(namespace="x", service_account_selector="all()"),
     '(projectcalico.org/namespace == "x" && all())'),
    (dict(namespace=""), "all()"),
    (dict(namespace="", selector="app == 'web'"), 'app == "web"'),
    (dict(namespace="", namespace_selector="all()"), "has(projectcalico.org/namespace)"),
    (dict(namespace="", selector="all()", namespace_selector="team == 'a'"),
     '(has(projectcalico.org/namespace) && pcns.team == "a")'),
    (dict(namespace="", selector="app == 'x'", namespace_selector="!has(team)"),
     '(app == "x" && !has(pcns.team))'),
    (dict(namespace="", namespace_selector="x == 'all()'"), 'pcns.x == "all()"'),
    (dict(namespace="", service_account_selector="all()"),
     "has(projectcalico.org/serviceaccount)"),
    (dict(namespace="", selector="a == 'b'", namespace_selector="n == 'm'",
          service_account_selector="s == 't'"),
     '((a == "b" && pcns.n == "m") && pcsa.s == "t")'),
])
def test_policy_selector(kwargs: dict[str, Any], expected: str) -> None:
    assert str(policy_selector(**kwargs)) == expected


@pytest.mark.parametrize("scope, fields, expected", [
    ("x", dict(selector="a == 'b'"), '(projectcalico.org/namespace == "x" && a == "b")'),
    ("", dict(selector="a == 'b'"), 'a == "b"'),
    ("x", dict(), None),  # nets/ports only: no namespace restriction
    ("x", dict(notSelector="a == 'b'"), 'projectcalico.org/namespace == "x"'),
    ("", dict(notSelector="a == 'b'"), None),
    ("x", dict(namespaceSelector="all()"), "has(projectcalico.org/namespace)"),
    ("x", dict(namespaceSelector="all()", selector="a == 'b'"),
     '(has(projectcalico.org/namespace) && a == "b")'),
    ("", dict(namespaceSelector="team == 'a'", selector="a == 'b'"),
     '(pcns.team == "a" && a == "b")'),
    ("x", dict(namespaceSelector="global()"), "!has(projectcalico.org/namespace)"),
    ("x", dict(namespaceSelector="  global()  "), "!has(projectcalico.org/namespace)"),
    ("", dict(serviceAccounts={"names": ["b", "a"]}),
     'projectcalico.org/serviceaccount in {"a", "b"}'),
    ("x", dict(serviceAccounts={"names": ["a"], "selector": "k == 'v'"}, selector="s == 't'"),
     '(projectcalico.org/namespace == "x" && ((pcsa.k == "v" && '
     'projectcalico.org/serviceaccount in {"a"}) && s == "t"))'),
])
def test_entity_selector(scope: str, fields: dict[str, Any], expected: str | None) -> None:
    assert ent(scope, **fields) == expected


@pytest.mark.parametrize("call, message", [
    (lambda: policy_selector(namespace="x", selector="global()"), "spec.selector: global()"),
    (lambda: policy_selector(namespace="", namespace_selector="global()"),
     "spec.namespaceSelector: global()"),
    (lambda: policy_selector(namespace="", selector="a = 'b'"), "spec.selector: selector"),
    (lambda: ent("x", namespaceSelector="global() && all()"),
     "rule.namespaceSelector: global() must be the whole selector"),
    (lambda: ent("x", selector="global()"), "rule.selector: global()"),
])
def test_selector_errors_name_the_field(call: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_rule_compile_errors_name_the_field() -> None:
    scope = Scope("x")
    for rule, field in [
        ({"action": "Accept"}, "r.action"),
        ({"action": "Allow", "protocol": "XTP"}, "r.protocol"),
        ({"action": "Allow", "destination": {"ports": ["70000"]}}, "r.destination.ports"),
        ({"action": "Allow", "destination": {"ports": ["90:80"]}}, "r.destination.ports"),
        ({"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}, "r.source.nets"),
        ({"action": "Allow", "ipVersion": 5}, "r.ipVersion"),
    ]:
        with pytest.raises(PolicyError, match=field.replace(".", r"\.")):
            compile_rule(rule, 0, scope, "r")


def test_rule_nets_are_masked() -> None:
    rule = compile_rule({"action": "Allow", "source": {"nets": ["10.0.0.10/4"]}}, 0, Scope(), "r")
    assert [str(n) for n in rule.source.nets or ()] == ["0.0.0.0/4"]
