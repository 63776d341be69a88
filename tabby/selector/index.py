"""Incremental label index: which selectors match which endpoints, updated per change.

Endpoints have their own labels plus an ordered list of parents (profiles, namespaces)
whose labels they inherit. As in Calico's InheritIndex the endpoint's own label wins,
then the first parent in its list that has the label. A parent that was never set (or
was deleted) contributes no labels; its children keep referring to it.

Work per change is proportional to what changed, using two facts:

* a selector's result depends only on the label keys it mentions, so when an
  endpoint's labels change only selectors mentioning a changed key can flip;
* most selectors *require* something (``restrict.requirement``): ``app == 'x'`` can only
  match endpoints with app=x. Selectors are indexed by their required (key, value) or
  key, and endpoints by their (key, value) pairs and keys, so adding a selector visits
  only endpoints that can match, and adding an endpoint only selectors that can match.

Selectors without a usable requirement (``!has(a)``, ``a != 'x'``, ``all()``) are indexed
by the keys they mention; those that match an empty label set are matched to a new
endpoint without evaluation unless it carries one of their keys.

Callbacks ``on_match_started(sel_id, ep_id)`` / ``on_match_stopped(sel_id, ep_id)`` fire
exactly once per real change, after the index has recorded it. They must not call back
into the index.

Memory is per endpoint (Felix's target is 250,000 of them against a few hundred
selectors), so the endpoint side is kept compact:

* one label dict per endpoint, the effective one; its own labels are recovered from a
  tuple of its own keys, shared between endpoints with the same keys (own labels win, so
  their values are the effective ones);
* endpoints are indexed by (key, value) only for keys some selector mentions (built on
  first use, kept afterwards so a selector coming and going does not rescan): labels no
  selector reads, such as ``pod-template-hash``, cost nothing beyond the label dict. A
  (key, value) held by one endpoint maps to the bare endpoint id; "has the key" is the
  union of the key's value buckets, with a count per key;
* large collections of endpoint ids (value buckets, a selector's matches, a parent's
  children) are dicts used as sets: CPython sizes a set's table at up to 4x its
  elements, 16 bytes a slot, so a large dict is about half the size;
* an endpoint's current matches are a tuple while there are few (a set above
  ``_FEW``), and absent while there are none.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

from .restrict import ANY, Alternative, Requirement, requirement_options
from .selector import Selector, parse

MatchCallback = Callable[[Any, Any], None]


def _noop(sel_id: Any, ep_id: Any) -> None:
    return None


def _add(index: dict, key: Hashable, item: Hashable) -> None:
    bucket = index.get(key)
    if bucket is None:
        index[key] = {item}
    else:
        bucket.add(item)


def _discard(index: dict, key: Hashable, item: Hashable) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(item)
        if not bucket:
            del index[key]


_FEW = 16  # an endpoint's matches: a tuple up to this many, then a set
_MISSING = object()


def bucket_add(index: dict, key: Hashable, item: Hashable) -> None:
    """Add to a bucket of endpoint ids: the bare id while it holds one (ids are hashable,
    so never a dict themselves), from two on a dict used as a set (a large dict takes
    about half the memory of a set of the same size)."""
    bucket = index.get(key, _MISSING)
    if bucket is _MISSING:
        index[key] = item
    elif type(bucket) is dict:
        bucket[item] = None
    elif bucket != item:
        index[key] = {bucket: None, item: None}


def bucket_discard(index: dict, key: Hashable, item: Hashable) -> None:
    bucket = index.get(key, _MISSING)
    if type(bucket) is dict:
        bucket.pop(item, None)
        if len(bucket) == 1:
            index[key] = next(iter(bucket))
    elif bucket is not _MISSING and bucket == item:
        del index[key]


def _bucket_len(bucket: Any) -> int:
    return len(bucket) if type(bucket) is dict else 1


def _few_add(index: dict, key: Hashable, item: Hashable) -> None:
    """Add ``item`` (not yet there) to a collection that is a tuple while small."""
    got = index.get(key)
    if got is None:
        index[key] = (item,)
    elif type(got) is tuple:
        index[key] = got + (item,) if len(got) < _FEW else {*got, item}
    else:
        got.add(item)


def _few_discard(index: dict, key: Hashable, item: Hashable) -> None:
    got = index.get(key)
    if got is None:
        return
    if type(got) is tuple:
        if item in got:
            if len(got) == 1:
                del index[key]
            else:
                index[key] = tuple(x for x in got if x != item)
    else:
        got.discard(item)
        if not got:
            del index[key]


def _check_labels(what: str, ident: Any, labels: Mapping[str, str]) -> dict[str, str]:
    out = dict(labels)
    for k, v in out.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{what} {ident!r}: label {k!r}={v!r} must map str to str")
    return out


class _SelInfo:
    __slots__ = ("selector", "fn", "keys", "options", "neg_options", "req", "empty_match")

    fn: Callable[[Mapping[str, str]], bool]

    def __init__(self, selector: Selector):
        self.selector = selector
        # ``fn`` is compiled on first use (``__getattr__``): of 10,000 policy selectors
        # against a node's 200 endpoints most are never evaluated.
        self.keys = selector.label_keys
        try:
            self.options: list[frozenset[Alternative]] = requirement_options(selector.root)
            # What the *negation* requires bounds the endpoints the selector rejects:
            # "tier != 'db'" can only reject endpoints with tier=db. Only needed (and
            # kept) without a requirement of its own.
            self.neg_options = (
                [] if self.options else requirement_options(selector.root, negated=True))
        except RecursionError:
            self.options = self.neg_options = []
        # The statically most selective option indexes the selector.
        self.req: Requirement = self.options[0] if self.options else None
        # With a requirement the empty label set cannot match (it satisfies nothing).
        self.empty_match = self.req is None and self.fn({})

    def __getattr__(self, name: str) -> Any:
        # Reached only while the ``fn`` slot is still empty.
        if name == "fn":
            fn = self.fn = self.selector.matches
            return fn
        raise AttributeError(name)


class _EpInfo:
    __slots__ = ("own_keys", "parents", "labels")

    def __init__(self, own_keys: tuple[str, ...], parents: tuple, labels: dict[str, str]):
        self.own_keys = own_keys  # shared between endpoints; values are in labels
        self.parents = parents
        self.labels = labels  # effective labels after inheritance (own ones win)

    def own(self) -> dict[str, str]:
        labels = self.labels
        return {k: labels[k] for k in self.own_keys}


class LabelIndex:
    """Selectors x endpoints match index with started/stopped callbacks."""

    def __init__(
        self,
        on_match_started: MatchCallback | None = None,
        on_match_stopped: MatchCallback | None = None,
    ):
        self._on_started = on_match_started or _noop
        self._on_stopped = on_match_stopped or _noop

        self._sels: dict[Any, _SelInfo] = {}
        self._eps: dict[Any, _EpInfo] = {}
        self._parent_labels: dict[Any, dict[str, str]] = {}
        self._children: dict[Any, dict[Any, None]] = {}  # parent -> children (as a set)
        self._own_keys: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared key tuples

        # Current matches, both ways: a selector's as a dict used as a set (smaller than a
        # set), an endpoint's as a tuple while few (absent if none).
        self._eps_by_sel: dict[Any, dict[Any, None]] = {}
        self._sels_by_ep: dict[Any, tuple | set] = {}

        # Endpoints by effective label, for the keys selectors mention: key -> value ->
        # bucket (bare id or dict), and how many endpoints have the key. Used when a
        # selector is added.
        self._eps_by_label: dict[str, dict[str, Any]] = {}
        self._key_count: dict[str, int] = {}

        # Selectors with a requirement, by required alternative: used for a new endpoint.
        self._sels_by_req_kv: dict[tuple[str, str], set] = {}
        self._sels_by_req_key: dict[str, set] = {}
        # The same, also keyed by each label key the selector mentions: used when an
        # endpoint's key k changes, to find selectors mentioning k that it may now match.
        self._trig_kv: dict[tuple[str, str, str], set] = {}
        self._trig_key: dict[tuple[str, str], set] = {}
        # Every selector by each key it mentions (to find current matches a change of
        # that key may end), those without a requirement likewise, and those matching {}.
        self._sels_by_key: dict[str, set] = {}
        self._unopt_by_key: dict[str, set] = {}
        self._empty_matchers: set = set()

    # ------------------------------------------------------------------ queries

    def matches_for_selector(self, sel_id: Any) -> set:
        """Endpoint ids the selector currently matches (a copy)."""
        return set(self._eps_by_sel.get(sel_id, ()))

    def selectors_for_endpoint(self, ep_id: Any) -> set:
        """Selector ids currently matching the endpoint (a copy)."""
        return set(self._sels_by_ep.get(ep_id, ()))

    def endpoint_labels(self, ep_id: Any) -> dict[str, str] | None:
        """The endpoint's effective labels (own plus inherited), or None if unknown."""
        ep = self._eps.get(ep_id)
        return None if ep is None else dict(ep.labels)

    def has_match(self, sel_id: Any, ep_id: Any) -> bool:
        matches = self._eps_by_sel.get(sel_id)
        return matches is not None and ep_id in matches

    def iter_matches(self, sel_id: Any) -> Iterator[Any]:
        """The selector's current matches without a copy: do not change the index (or let
        a callback run) while iterating."""
        return iter(self._eps_by_sel.get(sel_id, ()))

    def selector(self, sel_id: Any) -> Selector | None:
        info = self._sels.get(sel_id)
        return None if info is None else info.selector

    def selector_ids(self) -> set:
        return set(self._sels)

    def endpoint_ids(self) -> set:
        return set(self._eps)

    # ------------------------------------------------------------------ selectors

    def update_selector(self, sel_id: Any, selector: Selector | str) -> None:
        """Add or replace a selector; an unchanged canonical form is a no-op."""
        if not isinstance(selector, Selector):
            selector = parse(selector)
        old = self._sels.get(sel_id)
        if old is not None and old.selector == selector:
            return
        info = _SelInfo(selector)
        self._index_keys(info.keys)
        new_matches = self._scan_endpoints(info)
        if old is not None:
            self._unindex_selector(sel_id, old)
        self._sels[sel_id] = info
        self._index_selector(sel_id, info)
        current = self._eps_by_sel.setdefault(sel_id, {})
        # _stop/_start inlined: a broad selector can start or stop thousands of matches.
        sels_by_ep, started, stopped = self._sels_by_ep, self._on_started, self._on_stopped
        for ep_id in current.keys() - new_matches:
            del current[ep_id]
            _few_discard(sels_by_ep, ep_id, sel_id)
            stopped(sel_id, ep_id)
        for ep_id in new_matches.difference(current):
            current[ep_id] = None
            _few_add(sels_by_ep, ep_id, sel_id)
            started(sel_id, ep_id)

    def delete_selector(self, sel_id: Any) -> None:
        info = self._sels.pop(sel_id, None)
        if info is None:
            return
        self._unindex_selector(sel_id, info)
        current = self._eps_by_sel[sel_id]
        sels_by_ep, stopped = self._sels_by_ep, self._on_stopped
        for ep_id in list(current):
            del current[ep_id]
            _few_discard(sels_by_ep, ep_id, sel_id)
            stopped(sel_id, ep_id)
        del self._eps_by_sel[sel_id]

    def _index_keys(self, keys: Iterable[str]) -> None:
        """Index endpoints by each of ``keys`` not indexed yet (one pass over them all)."""
        for key in keys:
            if key in self._eps_by_label:
                continue
            values: dict[str, Any] = {}
            count = 0
            for ep_id, ep in self._eps.items():
                value = ep.labels.get(key)
                if value is not None:
                    bucket_add(values, value, ep_id)
                    count += 1
            self._eps_by_label[key] = values
            self._key_count[key] = count

    def _key_members(self, key: str) -> set:
        out: set = set()
        for bucket in self._eps_by_label[key].values():
            if type(bucket) is dict:
                out.update(bucket)
            else:
                out.add(bucket)
        return out

    def _scan_endpoints(self, info: _SelInfo) -> set:
        """Endpoint ids that ``info`` matches, visiting only possible candidates."""
        fn = info.fn
        eps = self._eps
        if info.options:
            candidates = self._candidates(info.options)
            return {e for e in candidates if fn(eps[e].labels)}
        if info.neg_options:
            # Everything matches except, possibly, the negation's candidates (for
            # all()/global() there are none); set arithmetic runs at C speed.
            candidates = self._candidates(info.neg_options)
            return eps.keys() - {e for e in candidates if not fn(eps[e].labels)}
        if not info.empty_match:
            # An endpoint with none of the mentioned keys behaves like {}: no match.
            candidates = set()
            for key in info.keys:
                candidates |= self._key_members(key)
            return {e for e in candidates if fn(eps[e].labels)}
        return {e for e, ep in eps.items() if fn(ep.labels)}

    def _candidates(self, options: list[frozenset[Alternative]]) -> set:
        """Endpoints meeting the option with the fewest of them now (each one is sound)."""
        best: list[tuple[str, Any]] | None = None
        best_size = 0
        by_label, key_count = self._eps_by_label, self._key_count
        for option in options:
            parts: list[tuple[str, Any]] = []
            size = 0
            for key, value in option:
                if value is ANY:
                    n = key_count[key]
                else:
                    bucket = by_label[key].get(value, _MISSING)  # type: ignore[arg-type]
                    n = 0 if bucket is _MISSING else _bucket_len(bucket)
                if n:
                    parts.append((key, value))
                    size += n
            if best is None or size < best_size:
                best, best_size = parts, size
        out: set = set()
        for key, value in best or ():
            if value is ANY:
                out |= self._key_members(key)
            else:
                bucket = by_label[key][value]
                if type(bucket) is dict:
                    out.update(bucket)
                else:
                    out.add(bucket)
        return out
    def _index_selector(self, sel_id: Any, info: _SelInfo) -> None:
        for key in info.keys:
            _add(self._sels_by_key, key, sel_id)
        if info.req is None:
            for key in info.keys:
                _add(self._unopt_by_key, key, sel_id)
            if info.empty_match:
                self._empty_matchers.add(sel_id)
            return
        for rkey, rvalue in info.req:
            if rvalue is ANY:
                _add(self._sels_by_req_key, rkey, sel_id)
                for key in info.keys:
                    _add(self._trig_key, (key, rkey), sel_id)
            else:
                _add(self._sels_by_req_kv, (rkey, rvalue), sel_id)
                for key in info.keys:
                    _add(self._trig_kv, (key, rkey, rvalue), sel_id)

    def _unindex_selector(self, sel_id: Any, info: _SelInfo) -> None:
        for key in info.keys:
            _discard(self._sels_by_key, key, sel_id)
        if info.req is None:
            for key in info.keys:
                _discard(self._unopt_by_key, key, sel_id)
            self._empty_matchers.discard(sel_id)
            return
        for rkey, rvalue in info.req:
            if rvalue is ANY:
                _discard(self._sels_by_req_key, rkey, sel_id)
                for key in info.keys:
                    _discard(self._trig_key, (key, rkey), sel_id)
            else:
                _discard(self._sels_by_req_kv, (rkey, rvalue), sel_id)
                for key in info.keys:
                    _discard(self._trig_kv, (key, rkey, rvalue), sel_id)

    # ------------------------------------------------------------------ endpoints

    def update_endpoint(
        self, ep_id: Any, labels: Mapping[str, str], parent_ids: Iterable[Any] = ()
    ) -> None:
        """Add or update an endpoint's own labels and its ordered parent list."""
        own = _check_labels("endpoint", ep_id, labels)
        parents = tuple(parent_ids)
        ep = self._eps.get(ep_id)
        if ep is None:
            for parent_id in parents:
                self._children.setdefault(parent_id, {})[ep_id] = None
            effective = self._effective(own, parents)
            self._eps[ep_id] = _EpInfo(self._shared_keys(own), parents, effective)
            self._index_endpoint_labels(ep_id, {}, effective, effective.keys())
            self._match_new_endpoint(ep_id, effective)
            return
        if ep.parents == parents and ep.own() == own:
            return
        if ep.parents != parents:
            old_set, new_set = set(ep.parents), set(parents)
            for parent_id in old_set - new_set:
                self._discard_child(parent_id, ep_id)
            for parent_id in new_set - old_set:
                self._children.setdefault(parent_id, {})[ep_id] = None
        ep.own_keys = self._shared_keys(own)
        ep.parents = parents
        self._relabel(ep_id, ep, self._effective(own, parents))

    def delete_endpoint(self, ep_id: Any) -> None:
        ep = self._eps.pop(ep_id, None)
        if ep is None:
            return
        for parent_id in set(ep.parents):
            self._discard_child(parent_id, ep_id)
        self._index_endpoint_labels(ep_id, ep.labels, {}, ep.labels.keys())
        eps_by_sel, stopped = self._eps_by_sel, self._on_stopped
        for sel_id in tuple(self._sels_by_ep.pop(ep_id, ())):
            del eps_by_sel[sel_id][ep_id]
            stopped(sel_id, ep_id)

    def _shared_keys(self, own: dict[str, str]) -> tuple[str, ...]:
        keys = tuple(own)
        got = self._own_keys.get(keys)
        if got is None:
            if len(self._own_keys) >= 10_000:  # unbounded variety: stop sharing
                return keys
            self._own_keys[keys] = got = keys
        return got

    def _discard_child(self, parent_id: Any, ep_id: Any) -> None:
        children = self._children.get(parent_id)
        if children is not None:
            children.pop(ep_id, None)
            if not children:
                del self._children[parent_id]

    # ------------------------------------------------------------------ parents

    def update_parent(self, parent_id: Any, labels: Mapping[str, str]) -> None:
        """Set a parent's labels (a profile's labelsToApply, a namespace's pcns. labels)."""
        new = _check_labels("parent", parent_id, labels)
        if self._parent_labels.get(parent_id) == new:
            return
        self._parent_labels[parent_id] = new
        self._refresh_children(parent_id)

    def delete_parent(self, parent_id: Any) -> None:
        if self._parent_labels.pop(parent_id, None) is not None:
            self._refresh_children(parent_id)

    def _refresh_children(self, parent_id: Any) -> None:
        for ep_id in list(self._children.get(parent_id, ())):
            ep = self._eps[ep_id]
            self._relabel(ep_id, ep, self._effective(ep.own(), ep.parents))

    def _effective(self, own: dict[str, str], parents: tuple) -> dict[str, str]:
        if not parents:
            return own
        merged: dict[str, str] = {}
        # Earlier parents win, so apply them last; own labels win over all.
        for parent_id in reversed(parents):
            plabels = self._parent_labels.get(parent_id)
            if plabels:
                merged.update(plabels)
        merged.update(own)
        return merged

    # ------------------------------------------------------------------ core

    def _index_endpoint_labels(
        self, ep_id: Any, old: Mapping[str, str], new: Mapping[str, str], keys: Iterable[str]
    ) -> None:
        by_label, key_count = self._eps_by_label, self._key_count
        for key in keys:
            values = by_label.get(key)
            if values is None:
                continue  # no selector has mentioned this key
            old_value = old.get(key)
            new_value = new.get(key)
            if old_value is not None:
                bucket_discard(values, old_value, ep_id)
                if new_value is None:
                    key_count[key] -= 1
            if new_value is not None:
                bucket_add(values, new_value, ep_id)
                if old_value is None:
                    key_count[key] += 1

    def _match_new_endpoint(self, ep_id: Any, labels: dict[str, str]) -> None:
        candidates: set = set()
        for key, value in labels.items():
            for bucket in (
                self._sels_by_req_kv.get((key, value)),
                self._sels_by_req_key.get(key),
                self._unopt_by_key.get(key),
            ):
                if bucket:
                    candidates |= bucket
        sels = self._sels
        matched = [s for s in candidates if sels[s].fn(labels)]
        # The rest of the selectors matching {} mention none of this endpoint's keys,
        # so they see it as {}: a match without evaluating.
        matched.extend(s for s in self._empty_matchers if s not in candidates)
        for sel_id in matched:
            self._start(sel_id, ep_id)

    def _relabel(self, ep_id: Any, ep: _EpInfo, new: dict[str, str]) -> None:
        old = ep.labels
        changed = [k for k in old if old[k] != new.get(k)]
        changed.extend(k for k in new if k not in old)
        ep.labels = new
        if not changed:
            return
        self._index_endpoint_labels(ep_id, old, new, changed)

        # A snapshot: each candidate below is decided once, against its state before.
        current = self._sels_by_ep.get(ep_id, ())
        sels = self._sels
        candidates: set = set()
        # Current matches can only be lost through a selector mentioning a changed key;
        # new ones only through such a selector whose requirement the new labels meet,
        # or which has no requirement.
        trig_kv, trig_key, unopt = self._trig_kv, self._trig_key, self._unopt_by_key
        by_key = self._sels_by_key
        for key in changed:
            bucket = by_key.get(key)
            if not bucket:
                continue  # no selector mentions this key: nothing can change
            if current:
                if type(current) is tuple:
                    candidates.update(s for s in current if s in bucket)
                else:
                    candidates |= current & bucket  # type: ignore[operator]  # the smaller set
            bucket = unopt.get(key)
            if bucket:
                candidates |= bucket
            for rkey, rvalue in new.items():
                bucket = trig_kv.get((key, rkey, rvalue))
                if bucket:
                    candidates |= bucket
                bucket = trig_key.get((key, rkey))
                if bucket:
                    candidates |= bucket
        for sel_id in candidates:
            now = sels[sel_id].fn(new)
            if now:
                if sel_id not in current:
                    self._start(sel_id, ep_id)
            elif sel_id in current:
                self._stop(sel_id, ep_id)

    def _start(self, sel_id: Any, ep_id: Any) -> None:
        self._eps_by_sel[sel_id][ep_id] = None
        _few_add(self._sels_by_ep, ep_id, sel_id)
        self._on_started(sel_id, ep_id)

    def _stop(self, sel_id: Any, ep_id: Any) -> None:
        del self._eps_by_sel[sel_id][ep_id]
        _few_discard(self._sels_by_ep, ep_id, sel_id)
        self._on_stopped(sel_id, ep_id)
