"""LabelIndex's compact storage: the small-to-large switches and lazily indexed keys.

The brute-force property in test_label_index.py runs with at most five selectors per
endpoint, so here the tuple-to-set threshold for an endpoint's matches is lowered to make
both forms (and the switch between them) appear, and after every operation the index's
internal buckets are checked against its own endpoint labels.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_label_index import make_index, operations, run_against_brute_force

from tabby.selector import LabelIndex, index


def check_internals(idx: LabelIndex) -> None:
    """Buckets, key counts and parent/child links agree with the endpoints' labels."""
    eps = idx._eps
    for key, values in idx._eps_by_label.items():
        want: dict[str, set] = {}
        for ep_id, ep in eps.items():
            if key in ep.labels:
                want.setdefault(ep.labels[key], set()).add(ep_id)
        got = {}
        for value, bucket in values.items():
            if type(bucket) is dict:
                assert len(bucket) >= 2, (key, value)  # one endpoint is stored bare
                got[value] = set(bucket)
            else:
                got[value] = {bucket}
        assert got == want, key
        assert idx._key_count[key] == sum(len(b) for b in want.values())
    for ep_id, ep in eps.items():
        assert set(ep.own_keys) <= set(ep.labels)
        for parent in ep.parents:
            assert ep_id in idx._children[parent]
    for ep_id, got in idx._sels_by_ep.items():
        assert got, ep_id  # endpoints without matches have no entry
        if type(got) is tuple:
            assert len(got) == len(set(got)) <= index._FEW


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(operations, max_size=40))
def test_compact_index_agrees_with_brute_force(ops):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index, "_FEW", 2)
        run_against_brute_force(ops, check_internals)


def test_labels_no_selector_reads_are_not_indexed():
    idx, rec = make_index()
    for i in range(20):
        idx.update_endpoint(f"e{i}", {"app": f"a{i % 2}", "hash": f"h{i}"})
    assert idx._eps_by_label == {}
    idx.update_selector("s", "app == 'a1'")
    assert set(idx._eps_by_label) == {"app"}
    assert len(idx.matches_for_selector("s")) == 10
    # A key indexed once stays indexed (a selector coming and going does not rescan)
    # and follows later changes.
    idx.delete_selector("s")
    idx.update_endpoint("e0", {"app": "a1", "hash": "h0"})
    idx.update_selector("s", "app == 'a1' || has(hash)")
    assert set(idx._eps_by_label) == {"app", "hash"}
    assert len(idx.matches_for_selector("s")) == 20
    assert idx._eps_by_label["hash"]["h3"] == "e3"  # a unique value: the bare id
    check_internals(idx)


def test_endpoint_matches_switch_between_tuple_and_set():
    idx, rec = make_index()
    idx.update_endpoint("e", {"app": "x"})
    n = index._FEW + 3
    for i in range(n):
        idx.update_selector(f"s{i}", "app == 'x'")
    assert type(idx._sels_by_ep["e"]) is set
    assert idx.selectors_for_endpoint("e") == {f"s{i}" for i in range(n)}
    idx.update_endpoint("e", {"app": "y"})  # a relabel stops every match at once
    assert "e" not in idx._sels_by_ep
    assert len(rec.matches) == 0
    idx.update_selector("t", "app == 'y'")
    assert idx._sels_by_ep["e"] == ("t",)
    check_internals(idx)


def test_own_labels_are_recovered_after_parent_changes():
    idx, rec = make_index()
    idx.update_parent("p", {"env": "prod", "app": "from-parent"})
    idx.update_endpoint("e", {"app": "own"}, ["p"])
    idx.update_selector("s", "env == 'prod' && app == 'own'")
    assert ("s", "e") in rec.matches
    idx.update_parent("p", {"env": "dev", "app": "other"})
    assert idx.endpoint_labels("e") == {"env": "dev", "app": "own"}
    idx.delete_parent("p")
    assert idx.endpoint_labels("e") == {"app": "own"}
    # Unchanged own labels and parents: a no-op, even though the dict is a new one.
    rec.take()
    idx.update_endpoint("e", {"app": "own"}, ["p"])
    assert rec.take() == set()
    check_internals(idx)
