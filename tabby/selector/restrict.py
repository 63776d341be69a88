"""What a selector requires of an endpoint's labels, for indexing.

``requirement(node)`` returns either ``None`` ("no usable restriction": the selector may
match endpoints lacking any particular label, e.g. ``!has(a)``, ``a != 'x'``, ``all()``)
or a frozenset of *alternatives*: the selector can only match labels that satisfy at
least one alternative. An alternative is ``(key, value)`` (label ``key`` equals
``value``) or ``(key, ANY)`` (label ``key`` is present). An empty frozenset means the
selector can never match (``a in {}``, ``!all()``).

The analysis is sound (never excludes a real match) but not complete: it only narrows
the candidates the label index evaluates.
"""

from __future__ import annotations

from .ast import (
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
)


class _Any:
    """Marker for "any value" in an alternative."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()

Alternative = tuple[str, "str | _Any"]
Requirement = frozenset[Alternative] | None

NEVER: frozenset[Alternative] = frozenset()

# A selector that can only match through a single (key, value) is far more selective
# than one needing just a key to be present: weigh presence alternatives heavily.
_ANY_WEIGHT = 50


def _score(req: frozenset[Alternative]) -> int:
    return sum(_ANY_WEIGHT if v is ANY else 1 for _, v in req)


_MAX_OPTIONS = 8


def _conjunction(parts: list[list[frozenset[Alternative]]]) -> list[frozenset[Alternative]]:
    """Every operand's requirement holds for a conjunction: all are options."""
    out = [req for options in parts for req in options]
    if any(not req for req in out):
        return [NEVER]
    out.sort(key=_score)
    return out[:_MAX_OPTIONS]


def _disjunction(parts: list[list[frozenset[Alternative]]]) -> list[frozenset[Alternative]]:
    """One operand must hold: the union of each operand's best requirement."""
    union: set[Alternative] = set()
    for options in parts:
        if not options:
            return []
        union |= options[0]
    return [frozenset(union)]


def requirement_options(node: Node, negated: bool = False) -> list[frozenset[Alternative]]:
    """Sound requirements of ``node`` (of ``!node`` if ``negated``), most selective first.

    Each one alone is sound; a conjunction offers one per operand so that the label
    index can pick whichever has the fewest candidate endpoints right now.
    """
    if isinstance(node, Not):
        return requirement_options(node.operand, not negated)
    if isinstance(node, (And, Or)):
        parts = [requirement_options(op, negated) for op in node.operands]
        # De Morgan: !(a && b) == !a || !b and !(a || b) == !a && !b.
        if isinstance(node, And) != negated:
            return _conjunction(parts)
        return _disjunction(parts)
    if isinstance(node, (All, Global)):
        return [NEVER] if negated else []
    if not negated:
        if isinstance(node, LabelEq):
            return [frozenset({(node.label, node.value)})]
        if isinstance(node, LabelIn):
            return [frozenset((node.label, v) for v in node.values)]
        if isinstance(node, (Has, LabelContains, LabelStartsWith, LabelEndsWith)):
            return [frozenset({(node.label, ANY)})]
        return []  # != and not in hold when the label is absent
    # Negated comparisons: "!(a != 'x')" is "a == 'x'", "!(a not in S)" is "a in S";
    # the negation of ==, in, has and the substring tests holds when the label is absent.
    if isinstance(node, LabelNe):
        return [frozenset({(node.label, node.value)})]
    if isinstance(node, LabelNotIn):
        return [frozenset((node.label, v) for v in node.values)]
    return []


def requirement(node: Node) -> Requirement:
    """The most selective sound requirement of ``node``, or None."""
    options = requirement_options(node)
    return options[0] if options else None
