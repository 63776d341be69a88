"""Property tests: canonical form is a fixed point and preserves meaning.

Random selector trees are printed canonically and also in randomly "noisy" but
equivalent spellings (extra whitespace, other quote style, redundant parentheses,
``startswith``/``notin`` spellings, extra ``!!``); every spelling must parse back to the
same tree, and the compiled matcher must agree with an independent evaluator written
here from Calico's evaluation table.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.selector import parse
from tabby.selector.ast import (
    All,
    And,
    Global,
    Has,
    LabelContains,
    LabelEndsWith,
    LabelEq,
    LabelIn,
    LabelNe,
    LabelNotIn,
    LabelStartsWith,
    Node,
    Not,
    Or,
    compile_closure,
    negate,
)

KEYS = [
    "a",
    "b",
    "projectcalico.org/namespace",
    "in",
    "not",
    "contains",
    "startswith",
    "has",
    "all",
    "x-y_z.w/v",
]
VALUES = ["", "x", "y", "xy", "x y", "'", '"', "all()", "é", "&& ||", "a == 'b"]

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
value_tuples = st.lists(values, max_size=4).map(tuple)

leaves = st.one_of(
    st.builds(LabelEq, keys, values),
    st.builds(LabelNe, keys, values),
    st.builds(LabelContains, keys, values),
    st.builds(LabelStartsWith, keys, values),
    st.builds(LabelEndsWith, keys, values),
    st.builds(LabelIn, keys, value_tuples),
    st.builds(LabelNotIn, keys, value_tuples),
    st.builds(Has, keys),
    st.just(All()),
    st.just(Global()),
)


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    operands = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(children.map(negate), operands.map(And), operands.map(Or))


trees = st.recursive(leaves, _extend, max_leaves=12)
label_maps = st.dictionaries(keys, st.sampled_from(VALUES + ["xx", "yx", "xyz"]), max_size=5)


def reference_eval(node: Node, labels: Mapping[str, str]) -> bool:
    """Calico's evaluation table, written out independently of tabby.selector.ast."""
    if isinstance(node, (All, Global)):
        return True
    if isinstance(node, Not):
        return not reference_eval(node.operand, labels)
    if isinstance(node, And):
        return all(reference_eval(op, labels) for op in node.operands)
    if isinstance(node, Or):
        return any(reference_eval(op, labels) for op in node.operands)
    present = node.label in labels  # type: ignore[attr-defined]
    value = labels.get(node.label)  # type: ignore[attr-defined]
    if isinstance(node, Has):
        return present
    if isinstance(node, LabelNe):
        return not present or value != node.value
    if isinstance(node, LabelNotIn):
        return not present or value not in node.values
    if not present:
        return False
    assert value is not None
    if isinstance(node, LabelEq):
        return value == node.value
    if isinstance(node, LabelIn):
        return value in node.values
    if isinstance(node, LabelContains):
        return node.value in value
    if isinstance(node, LabelStartsWith):
        return value.startswith(node.value)
    if isinstance(node, LabelEndsWith):
        return value.endswith(node.value)
    raise AssertionError(node)


def _quote(draw, value: str) -> str:
    choices = []
    if '"' not in value:
        choices.append('"')
    if "'" not in value:
        choices.append("'")
    q = draw(st.sampled_from(choices))
    return q + value + q


_OP_SPELLINGS = {
    LabelEq: ["=="],
    LabelNe: ["!="],
    LabelContains: ["contains"],
    LabelStartsWith: ["starts with", "startswith", "starts \t with"],
    LabelEndsWith: ["ends with", "endswith", "ends  with"],
    LabelIn: ["in"],
    LabelNotIn: ["not in", "notin", "not\tin"],
}


def noisy(draw, node: Node, top: bool = False) -> str:
    """An equivalent, randomly spelled rendering of ``node``."""
    ws = lambda: draw(st.sampled_from(["", " ", "  ", "\t", " \t "]))  # noqa: E731
    ws1 = lambda: draw(st.sampled_from([" ", "\t", "  "]))  # noqa: E731
    if isinstance(node, Not):
        bangs = "!" + "!!" * draw(st.integers(0, 1))
        return ws() + ws().join(bangs) + ws() + noisy(draw, node.operand)
    if isinstance(node, (And, Or)):
        sep = " && " if isinstance(node, And) else " || "
        sep = ws() + sep.strip() + ws()
        body = sep.join(noisy(draw, op) for op in node.operands)
        if top and draw(st.booleans()) and isinstance(node, Or):
            return body  # top level needs no parentheses
        return "(" + ws() + body + ws() + ")"
    if isinstance(node, All):
        text = "all(" + ws() + ")"
    elif isinstance(node, Global):
        text = "global(" + ws() + ")"
    elif isinstance(node, Has):
        text = "has(" + ws() + node.label + ws() + ")"
    else:
        op = draw(st.sampled_from(_OP_SPELLINGS[type(node)]))
        label = node.label  # type: ignore[attr-defined]
        before = ws() if op in ("==", "!=") else ws1()
        if isinstance(node, (LabelIn, LabelNotIn)):
            items = [_quote(draw, v) for v in draw(st.permutations(node.values))]
            items += [_quote(draw, v) for v in node.values[:1]]  # a duplicate
            trailing = "," if items and draw(st.booleans()) else ""
            rhs = "{" + ws() + (ws() + "," + ws()).join(items) + trailing + ws() + "}"
        else:
            rhs = _quote(draw, node.value)  # type: ignore[attr-defined]
        text = label + before + op + ws() + rhs
    if draw(st.booleans()):
        text = "(" + ws() + text + ws() + ")"
    return text


@settings(max_examples=300, deadline=None)
@given(trees, st.lists(label_maps, min_size=1, max_size=8))
def test_canonical_form_round_trips_and_keeps_meaning(tree, label_sets):
    canonical = str(tree)
    sel = parse(canonical)
    assert str(sel) == canonical
    assert sel.root == tree
    reparsed = parse(str(sel))
    assert str(reparsed) == canonical and reparsed.unique_id == sel.unique_id
    closure = compile_closure(tree)
    for labels in label_sets:
        expected = reference_eval(tree, labels)
        assert sel.matches(labels) is expected
        assert closure(labels) is expected
        assert reparsed.matches(labels) is expected


@settings(max_examples=300, deadline=None)
@given(trees, st.data())
def test_noisy_spellings_parse_to_the_same_tree(tree, data):
    text = noisy(data.draw, tree, top=True)
    sel = parse(text)
    assert sel.root == tree, text
    assert str(sel) == str(tree)


@settings(max_examples=200, deadline=None)
@given(trees, st.lists(label_maps, min_size=1, max_size=5))
def test_map_labels_and_replace_all_keep_meaning(tree, label_sets):
    sel = parse(str(tree))
    prefixed = sel.map_labels(lambda k: "pcns." + k)
    assert str(parse(str(prefixed))) == str(prefixed)
    replaced = sel.replace_all("has(projectcalico.org/namespace)")
    assert str(parse(str(replaced))) == str(replaced)
    for labels in label_sets:
        moved = {"pcns." + k: v for k, v in labels.items()}
        assert prefixed.matches(moved) == sel.matches(labels)
        if "projectcalico.org/namespace" in labels:
            # all() and has(namespace) agree on labels that carry the namespace key.
            assert replaced.matches(labels) == sel.matches(labels)
