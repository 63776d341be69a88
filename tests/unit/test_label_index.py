"""LabelIndex: incremental selector/endpoint matching with inheritance from parents."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.selector import LabelIndex, Selector, parse
from tabby.selector.ast import (
    All,
    And,
    Global,
    Has,
    LabelContains,
    LabelEq,
    LabelIn,
    LabelNe,
    LabelNotIn,
    LabelStartsWith,
    Node,
    Or,
    negate,
)
from tabby.selector.parser import parse_node


class Recorder:
    """Collects events and replays them into a match set, checking exactly-once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object, object]] = []
        self.matches: set[tuple[object, object]] = set()

    def started(self, sel_id, ep_id) -> None:
        assert (sel_id, ep_id) not in self.matches, f"duplicate start {sel_id} {ep_id}"
        self.matches.add((sel_id, ep_id))
        self.events.append(("start", sel_id, ep_id))

    def stopped(self, sel_id, ep_id) -> None:
        assert (sel_id, ep_id) in self.matches, f"stop without start {sel_id} {ep_id}"
        self.matches.discard((sel_id, ep_id))
        self.events.append(("stop", sel_id, ep_id))

    def take(self) -> set[tuple[str, object, object]]:
        out = set(self.events)
        assert len(out) == len(self.events)
        self.events.clear()
        return out


def make_index() -> tuple[LabelIndex, Recorder]:
    rec = Recorder()
    return LabelIndex(rec.started, rec.stopped), rec


def test_basic_matching_and_events():
    idx, rec = make_index()
    idx.update_selector("web", "app == 'web'")
    idx.update_endpoint("e1", {"app": "web"})
    idx.update_endpoint("e2", {"app": "db"})
    assert rec.take() == {("start", "web", "e1")}
    assert idx.matches_for_selector("web") == {"e1"}
    assert idx.selectors_for_endpoint("e1") == {"web"}
    assert idx.selectors_for_endpoint("e2") == set()

    idx.update_endpoint("e2", {"app": "web", "tier": "x"})
    assert rec.take() == {("start", "web", "e2")}
    idx.update_endpoint("e1", {"app": "db"})
    assert rec.take() == {("stop", "web", "e1")}
    idx.delete_endpoint("e2")
    assert rec.take() == {("stop", "web", "e2")}
    assert idx.matches_for_selector("web") == set()
    idx.delete_endpoint("nope")
    idx.delete_selector("nope")
    assert rec.take() == set()


def test_no_events_for_no_op_updates():
    idx, rec = make_index()
    idx.update_selector("s", "has(a)")
    idx.update_endpoint("e", {"a": "1", "b": "2"})
    rec.take()
    idx.update_endpoint("e", {"b": "2", "a": "1"})
    idx.update_endpoint("e", {"a": "1", "b": "3"})  # b is not mentioned by any selector
    idx.update_selector("s", "has( a )")  # same canonical form
    idx.update_selector("s", "has(a) && all()")  # different selector, same matches
    idx.update_parent("p", {"a": "9"})
    idx.update_endpoint("e", {"a": "1", "b": "3"}, ["p"])  # own label hides the parent's
    assert rec.take() == set()
    assert idx.matches_for_selector("s") == {"e"}


def test_selector_update_emits_the_difference():
    idx, rec = make_index()
    for i in range(6):
        idx.update_endpoint(i, {"n": str(i)})
    idx.update_selector("s", "n in {'0', '1', '2'}")
    assert rec.take() == {("start", "s", i) for i in (0, 1, 2)}
    idx.update_selector("s", parse("n in {'2', '3'}"))
    assert rec.take() == {("stop", "s", 0), ("stop", "s", 1), ("start", "s", 3)}
    idx.delete_selector("s")
    assert rec.take() == {("stop", "s", 2), ("stop", "s", 3)}
    assert idx.selector("s") is None and idx.selector_ids() == set()


def test_inheritance_own_labels_win_then_first_parent():
    idx, rec = make_index()
    idx.update_parent("kns.prod", {"pcns.env": "prod", "shared": "from-ns"})
    idx.update_parent("ksa.default", {"pcsa.name": "default", "shared": "from-sa"})
    idx.update_endpoint("pod", {"app": "web"}, ["kns.prod", "ksa.default"])
    assert idx.endpoint_labels("pod") == {
        "app": "web",
        "pcns.env": "prod",
        "shared": "from-ns",
        "pcsa.name": "default",
    }
    idx.update_endpoint("pod", {"app": "web", "shared": "own"}, ["ksa.default", "kns.prod"])
    assert idx.endpoint_labels("pod")["shared"] == "own"
    idx.update_endpoint("pod", {"app": "web"}, ["ksa.default", "kns.prod"])
    assert idx.endpoint_labels("pod")["shared"] == "from-sa"
    assert idx.endpoint_labels("missing") is None


def test_parent_changes_propagate_to_children():
    idx, rec = make_index()
    idx.update_selector("prod", "pcns.env == 'prod'")
    idx.update_selector("not-prod", "pcns.env != 'prod'")
    idx.update_endpoint("a", {"app": "x"}, ["ns1"])  # parent not known yet: no labels
    idx.update_endpoint("b", {"app": "y"}, ["ns1"])
    idx.update_endpoint("c", {"app": "z"}, ["ns2"])
    assert rec.take() == {("start", "not-prod", e) for e in "abc"}
    idx.update_parent("ns1", {"pcns.env": "prod"})
    assert rec.take() == {
        ("start", "prod", "a"),
        ("start", "prod", "b"),
        ("stop", "not-prod", "a"),
        ("stop", "not-prod", "b"),
    }
    idx.update_parent("ns1", {"pcns.env": "prod"})  # unchanged
    assert rec.take() == set()
    idx.delete_parent("ns1")
    assert rec.take() == {
        ("stop", "prod", "a"),
        ("stop", "prod", "b"),
        ("start", "not-prod", "a"),
        ("start", "not-prod", "b"),
    }
    # Children keep their link to a deleted parent and see it again when it returns.
    idx.update_parent("ns1", {"pcns.env": "prod"})
    assert idx.matches_for_selector("prod") == {"a", "b"}
    rec.take()
    # Moving an endpoint between parents.
    idx.update_endpoint("c", {"app": "z"}, ["ns1"])
    assert rec.take() == {("start", "prod", "c"), ("stop", "not-prod", "c")}
    idx.update_parent("ns2", {"pcns.env": "prod"})  # c no longer a child of ns2
    assert rec.take() == set()


@pytest.mark.parametrize(
    "text",
    ["all()", "global()", "!all()", "!has(x)", "x != 'v'", "x not in {'v'}", "!(x != 'v')"],
)
def test_selectors_without_requirements(text):
    idx, rec = make_index()
    idx.update_endpoint("plain", {"a": "1"})
    idx.update_selector("s", text)
    idx.update_endpoint("with-x", {"x": "v"})
    idx.update_endpoint("other-x", {"x": "w"})
    sel = parse(text)
    expected = {
        e for e, labels in [("plain", {"a": "1"}), ("with-x", {"x": "v"}), ("other-x", {"x": "w"})]
        if sel.matches(labels)
    }
    assert idx.matches_for_selector("s") == expected
    assert {e for _, _, e in rec.take()} == expected


def test_queries_return_copies():
    idx, _ = make_index()
    idx.update_selector("s", "all()")
    idx.update_endpoint("e", {"a": "1"})
    idx.matches_for_selector("s").clear()
    idx.selectors_for_endpoint("e").clear()
    idx.endpoint_labels("e").clear()
    assert idx.matches_for_selector("s") == {"e"}
    assert idx.selectors_for_endpoint("e") == {"s"}
    assert idx.endpoint_labels("e") == {"a": "1"}
    assert idx.endpoint_ids() == {"e"}


def test_caller_mutating_labels_does_not_affect_index():
    idx, _ = make_index()
    idx.update_selector("s", "a == '1'")
    labels = {"a": "1"}
    idx.update_endpoint("e", labels)
    labels["a"] = "2"
    assert idx.matches_for_selector("s") == {"e"}


def test_bad_input():
    idx, _ = make_index()
    with pytest.raises(TypeError, match="endpoint 'e'"):
        idx.update_endpoint("e", {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="parent 'p'"):
        idx.update_parent("p", {1: "a"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        idx.update_selector("s", "a ==")


def counting(text: str, counter: dict[str, int]) -> Selector:
    """A fresh (uncached) selector whose evaluations are counted."""
    sel = Selector(parse_node(text))
    inner = sel.matches

    def matches(labels: Mapping[str, str]) -> bool:
        counter[text] = counter.get(text, 0) + 1
        return inner(labels)

    sel.matches = matches  # type: ignore[method-assign]
    return sel


def test_work_is_proportional_to_the_change():
    idx, rec = make_index()
    for i in range(500):
        idx.update_endpoint(i, {"app": f"app{i % 50}", "ns": f"ns{i % 5}", "id": str(i)})
    evals: dict[str, int] = {}
    idx.update_selector("one-app", counting("app == 'app7'", evals))
    assert evals["app == 'app7'"] == 10  # only the 10 endpoints with app=app7
    idx.update_selector("two", counting("app in {'app1', 'app2'} && ns == 'ns1'", evals))
    assert evals["app in {'app1', 'app2'} && ns == 'ns1'"] == 20
    idx.update_selector("has", counting("has(missing) || app == 'app3'", evals))
    assert evals["has(missing) || app == 'app3'"] == 10
    idx.update_selector("unopt", counting("!has(other)", evals))  # matches everything
    # Evaluated once, on {}, to classify it; no endpoint has "other", none can fail it.
    assert evals["!has(other)"] == 1
    idx.update_selector("ne", counting("id != '3' && !has(other)", evals))
    assert evals["id != '3' && !has(other)"] == 2  # {} and the endpoint with id=3
    assert len(idx.matches_for_selector("ne")) == 499
    idx.update_selector("ns-only", counting("ns == 'ns2' && id != '7'", evals))
    assert len(idx.matches_for_selector("unopt")) == 500
    evals.clear()

    # Changing "id" on one endpoint: only selectors mentioning "id" whose requirement the
    # endpoint meets (or that have none) are evaluated; app/ns-only selectors are not.
    idx.update_endpoint(12, {"app": "app12", "ns": "ns2", "id": "changed"})
    assert evals == {"ns == 'ns2' && id != '7'": 1, "id != '3' && !has(other)": 1}
    evals.clear()
    # Changing app: selectors on app whose requirement the new labels meet.
    idx.update_endpoint(12, {"app": "app7", "ns": "ns2", "id": "changed"})
    assert evals == {"app == 'app7'": 1}
    evals.clear()
    # A new endpoint: only selectors that could match it, and those without a
    # requirement that mention one of its keys. "!has(other)" matches without
    # evaluation since it mentions none of them.
    rec.take()
    idx.update_endpoint("new", {"app": "app3", "ns": "ns4", "id": "x"})
    assert evals == {"has(missing) || app == 'app3'": 1, "id != '3' && !has(other)": 1}
    assert rec.take() == {
        ("start", "has", "new"),
        ("start", "unopt", "new"),
        ("start", "ne", "new"),
    }


# ---------------------------------------------------------------------------
# Property: the index agrees with brute force after any sequence of operations.

P_KEYS = ["a", "b", "c"]
P_VALUES = ["x", "y", ""]
p_keys = st.sampled_from(P_KEYS)
p_values = st.sampled_from(P_VALUES)
p_leaves = st.one_of(
    st.builds(LabelEq, p_keys, p_values),
    st.builds(LabelNe, p_keys, p_values),
    st.builds(LabelIn, p_keys, st.lists(p_values, max_size=2).map(tuple)),
    st.builds(LabelNotIn, p_keys, st.lists(p_values, max_size=2).map(tuple)),
    st.builds(LabelContains, p_keys, st.sampled_from(["x", ""])),
    st.builds(LabelStartsWith, p_keys, st.sampled_from(["y", ""])),
    st.builds(Has, p_keys),
    st.just(All()),
    st.just(Global()),
)


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    operands = st.lists(children, min_size=2, max_size=3).map(tuple)
    return st.one_of(children.map(negate), operands.map(And), operands.map(Or))


p_selectors = st.recursive(p_leaves, _extend, max_leaves=6).map(Selector)
p_labels = st.dictionaries(p_keys, p_values, max_size=3)
EP_IDS = st.sampled_from(["e0", "e1", "e2", "e3", "e4"])
PARENT_IDS = st.sampled_from(["p0", "p1", "p2"])
SEL_IDS = st.sampled_from(["s0", "s1", "s2", "s3", "s4"])

operations = st.one_of(
    st.tuples(st.just("ep"), EP_IDS, p_labels, st.lists(PARENT_IDS, max_size=3)),
    st.tuples(st.just("del_ep"), EP_IDS),
    st.tuples(st.just("parent"), PARENT_IDS, p_labels),
    st.tuples(st.just("del_parent"), PARENT_IDS),
    st.tuples(st.just("sel"), SEL_IDS, p_selectors),
    st.tuples(st.just("del_sel"), SEL_IDS),
)


def brute_force(endpoints, parents, selectors) -> set[tuple[str, str]]:
    out = set()
    for ep_id, (own, parent_ids) in endpoints.items():
        labels: dict[str, str] = {}
        for p in parent_ids:
            for k, v in parents.get(p, {}).items():
                labels.setdefault(k, v)  # the first parent with the key wins
        labels.update(own)
        for sel_id, sel in selectors.items():
            if sel.matches(labels):
                out.add((sel_id, ep_id))
    return out


@settings(max_examples=250, deadline=None)
@given(st.lists(operations, max_size=40))
def test_index_agrees_with_brute_force(ops):
    run_against_brute_force(ops)


def run_against_brute_force(ops: list, check: Callable[[LabelIndex], None] | None = None) -> None:
    """Apply `ops` to a fresh index; after each, its matches (reported and queried) equal a
    brute-force evaluation, and `check(index)` holds. Shared with test_label_index_compact."""
    idx, rec = make_index()
    endpoints: dict[str, tuple[dict[str, str], list[str]]] = {}
    parents: dict[str, dict[str, str]] = {}
    selectors: dict[str, Selector] = {}
    for op in ops:
        kind = op[0]
        if kind == "ep":
            _, ep_id, labels, parent_ids = op
            idx.update_endpoint(ep_id, labels, parent_ids)
            endpoints[ep_id] = (labels, parent_ids)
        elif kind == "del_ep":
            idx.delete_endpoint(op[1])
            endpoints.pop(op[1], None)
        elif kind == "parent":
            idx.update_parent(op[1], op[2])
            parents[op[1]] = op[2]
        elif kind == "del_parent":
            idx.delete_parent(op[1])
            parents.pop(op[1], None)
        elif kind == "sel":
            idx.update_selector(op[1], op[2])
            selectors[op[1]] = op[2]
        else:
            idx.delete_selector(op[1])
            selectors.pop(op[1], None)

        expected = brute_force(endpoints, parents, selectors)
        assert rec.matches == expected, op
        for sel_id in selectors:
            assert idx.matches_for_selector(sel_id) == {e for s, e in expected if s == sel_id}
        for ep_id in endpoints:
            assert idx.selectors_for_endpoint(ep_id) == {s for s, e in expected if e == ep_id}
        if check is not None:
            check(idx)
    # Tear everything down: every match must be stopped exactly once.
    for ep_id in list(endpoints):
        idx.delete_endpoint(ep_id)
    assert rec.matches == set()
    assert not idx._sels_by_ep
