"""Selector syntax tree: node types, evaluation and canonical printing.

Every node is an immutable value. Constructors check the invariants that keep the
canonical form parseable and stable (``parse(str(x))`` prints as ``str(x)``):

* label keys are valid label names (``a-zA-Z0-9_./-``, 1..512 chars);
* a value cannot contain both quote characters (there would be no way to quote it);
* ``Not`` never wraps ``Not`` (the parser collapses runs of ``!``; use :func:`negate`);
* ``And``/``Or`` have at least two operands (a single operand is just that operand).

Evaluation follows Calico's table: a missing label makes ``==``, ``in``, ``contains``,
``starts with``, ``ends with`` and ``has`` false, and ``!=`` / ``not in`` true.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from .tokenizer import MAX_LABEL_LENGTH, is_valid_label

Labels = Mapping[str, str]
Matcher = Callable[[Labels], bool]


def quote(value: str) -> str:
    """Quote a value as Calico prints it: double quotes unless it contains one."""
    if '"' in value:
        return "'" + value + "'"
    return '"' + value + '"'


def _check_label(label: str) -> None:
    if not isinstance(label, str) or not is_valid_label(label):
        raise ValueError(
            f"invalid selector label {label!r}: must be 1-{MAX_LABEL_LENGTH} characters "
            "of a-z A-Z 0-9 _ . / -"
        )


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"invalid selector value {value!r}: must be a string")
    if '"' in value and "'" in value:
        raise ValueError(f"invalid selector value {value!r}: cannot contain both ' and \"")


class Node:
    """Base of all selector nodes."""

    __slots__ = ()

    def render(self, out: list[str]) -> None:
        """Append the canonical text of this node to ``out``."""
        raise NotImplementedError

    def source(self, consts: dict[str, object]) -> str:
        """A Python boolean expression over ``labels``/``get`` equivalent to this node."""
        raise NotImplementedError

    def closure(self) -> Matcher:
        """A plain-closure matcher (used when code generation is not possible)."""
        raise NotImplementedError

    def children(self) -> tuple[Node, ...]:
        return ()

    def map_labels(self, fn: Callable[[str], str]) -> Node:
        return self

    def replace_all(self, replacement: Node) -> Node:
        return self

    def walk(self) -> Iterator[Node]:
        """This node and all its descendants, depth first."""
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children()))

    def __str__(self) -> str:
        out: list[str] = []
        self.render(out)
        return "".join(out)


# ---------------------------------------------------------------------------
# Label comparisons


@dataclass(frozen=True, slots=True)
class _LabelValueOp(Node):
    label: str
    value: str

    OP: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_label(self.label)
        _check_value(self.value)

    def render(self, out: list[str]) -> None:
        out.append(f"{self.label} {self.OP} {quote(self.value)}")

    def map_labels(self, fn: Callable[[str], str]) -> Node:
        return replace(self, label=fn(self.label))


@dataclass(frozen=True, slots=True)
class LabelEq(_LabelValueOp):
    OP: ClassVar[str] = "=="

    def source(self, consts: dict[str, object]) -> str:
        return f"(get({self.label!r}) == {self.value!r})"

    def closure(self) -> Matcher:
        k, v = self.label, self.value
        return lambda labels: labels.get(k) == v


@dataclass(frozen=True, slots=True)
class LabelNe(_LabelValueOp):
    OP: ClassVar[str] = "!="

    def source(self, consts: dict[str, object]) -> str:
        # A missing label gives None, which differs from every string: true, as Calico.
        return f"(get({self.label!r}) != {self.value!r})"

    def closure(self) -> Matcher:
        k, v = self.label, self.value
        return lambda labels: labels.get(k) != v


@dataclass(frozen=True, slots=True)
class LabelContains(_LabelValueOp):
    OP: ClassVar[str] = "contains"

    def source(self, consts: dict[str, object]) -> str:
        return f"((_v := get({self.label!r})) is not None and {self.value!r} in _v)"

    def closure(self) -> Matcher:
        k, v = self.label, self.value

        def match(labels: Labels) -> bool:
            got = labels.get(k)
            return got is not None and v in got

        return match


@dataclass(frozen=True, slots=True)
class LabelStartsWith(_LabelValueOp):
    OP: ClassVar[str] = "starts with"

    def source(self, consts: dict[str, object]) -> str:
        return f"((_v := get({self.label!r})) is not None and _v.startswith({self.value!r}))"

    def closure(self) -> Matcher:
        k, v = self.label, self.value

        def match(labels: Labels) -> bool:
            got = labels.get(k)
            return got is not None and got.startswith(v)

        return match


@dataclass(frozen=True, slots=True)
class LabelEndsWith(_LabelValueOp):
    OP: ClassVar[str] = "ends with"

    def source(self, consts: dict[str, object]) -> str:
        return f"((_v := get({self.label!r})) is not None and _v.endswith({self.value!r}))"

    def closure(self) -> Matcher:
        k, v = self.label, self.value

        def match(labels: Labels) -> bool:
            got = labels.get(k)
            return got is not None and got.endswith(v)

        return match


@dataclass(frozen=True, slots=True)
class _LabelSetOp(Node):
    """``label in {...}`` / ``label not in {...}``; values kept sorted and unique."""

    label: str
    values: tuple[str, ...]
    value_set: frozenset[str] = field(init=False, repr=False, compare=False)

    OP: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_label(self.label)
        for v in self.values:
            _check_value(v)
        unique = frozenset(self.values)
        # Python orders str by code point, which is UTF-8 byte order, as Go sorts.
        object.__setattr__(self, "values", tuple(sorted(unique)))
        object.__setattr__(self, "value_set", unique)

    def render(self, out: list[str]) -> None:
        out.append(f"{self.label} {self.OP} {{{', '.join(quote(v) for v in self.values)}}}")

    def map_labels(self, fn: Callable[[str], str]) -> Node:
        return type(self)(fn(self.label), self.values)

    def _const(self, consts: dict[str, object]) -> str:
        name = f"_s{len(consts)}"
        consts[name] = self.value_set
        return name


@dataclass(frozen=True, slots=True)
class LabelIn(_LabelSetOp):
    OP: ClassVar[str] = "in"

    def source(self, consts: dict[str, object]) -> str:
        return f"(get({self.label!r}) in {self._const(consts)})"

    def closure(self) -> Matcher:
        k, vs = self.label, self.value_set
        return lambda labels: labels.get(k) in vs


@dataclass(frozen=True, slots=True)
class LabelNotIn(_LabelSetOp):
    OP: ClassVar[str] = "not in"

    def source(self, consts: dict[str, object]) -> str:
        return f"(get({self.label!r}) not in {self._const(consts)})"

    def closure(self) -> Matcher:
        k, vs = self.label, self.value_set
        return lambda labels: labels.get(k) not in vs


@dataclass(frozen=True, slots=True)
class Has(Node):
    label: str

    def __post_init__(self) -> None:
        _check_label(self.label)

    def render(self, out: list[str]) -> None:
        out.append(f"has({self.label})")

    def source(self, consts: dict[str, object]) -> str:
        return f"({self.label!r} in labels)"

    def closure(self) -> Matcher:
        k = self.label
        return lambda labels: k in labels

    def map_labels(self, fn: Callable[[str], str]) -> Node:
        return Has(fn(self.label))


# ---------------------------------------------------------------------------
# Constants


def _true(labels: Labels) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class All(Node):
    """``all()``: matches everything."""

    def render(self, out: list[str]) -> None:
        out.append("all()")

    def source(self, consts: dict[str, object]) -> str:
        return "True"

    def closure(self) -> Matcher:
        return _true

    def replace_all(self, replacement: Node) -> Node:
        return replacement


@dataclass(frozen=True, slots=True)
class Global(Node):
    """``global()``: matches everything; only meaningful as a whole namespaceSelector."""

    def render(self, out: list[str]) -> None:
        out.append("global()")

    def source(self, consts: dict[str, object]) -> str:
        return "True"

    def closure(self) -> Matcher:
        return _true


# ---------------------------------------------------------------------------
# Boolean structure


@dataclass(frozen=True, slots=True)
class Not(Node):
    operand: Node

    def __post_init__(self) -> None:
        if isinstance(self.operand, Not):
            raise ValueError("Not(Not(x)) is not a valid selector node; use negate()")

    def render(self, out: list[str]) -> None:
        # No parentheses of its own: an And/Or operand brings them.
        out.append("!")
        self.operand.render(out)

    def source(self, consts: dict[str, object]) -> str:
        return f"(not {self.operand.source(consts)})"

    def closure(self) -> Matcher:
        inner = self.operand.closure()
        return lambda labels: not inner(labels)

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)

    def map_labels(self, fn: Callable[[str], str]) -> Node:
        return Not(self.operand.map_labels(fn))

    def replace_all(self, replacement: Node) -> Node:
        return negate(self.operand.replace_all(replacement))


def negate(node: Node) -> Node:
    """``!node``, collapsing a double negation as the parser does for ``!!``."""
    if isinstance(node, Not):
        return node.operand
    return Not(node)


@dataclass(frozen=True, slots=True)
class _Junction(Node):
    operands: tuple[Node, ...]

    SEP: ClassVar[str] = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        if len(self.operands) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two operands")

    def render(self, out: list[str]) -> None:
        # Always parenthesised, even at top level, as Calico prints.
        out.append("(")
        for i, op in enumerate(self.operands):
            if i:
                out.append(self.SEP)
            op.render(out)
        out.append(")")

    def children(self) -> tuple[Node, ...]:
        return self.operands

    def map_labels(self, fn: Callable[[str], str]) -> Node:
        return type(self)(tuple(op.map_labels(fn) for op in self.operands))

    def replace_all(self, replacement: Node) -> Node:
        return type(self)(tuple(op.replace_all(replacement) for op in self.operands))


@dataclass(frozen=True, slots=True)
class And(_Junction):
    SEP: ClassVar[str] = " && "

    def source(self, consts: dict[str, object]) -> str:
        return "(" + " and ".join(op.source(consts) for op in self.operands) + ")"

    def closure(self) -> Matcher:
        parts = tuple(op.closure() for op in self.operands)

        def match(labels: Labels) -> bool:
            for part in parts:
                if not part(labels):
                    return False
            return True

        return match


@dataclass(frozen=True, slots=True)
class Or(_Junction):
    SEP: ClassVar[str] = " || "

    def source(self, consts: dict[str, object]) -> str:
        return "(" + " or ".join(op.source(consts) for op in self.operands) + ")"

    def closure(self) -> Matcher:
        parts = tuple(op.closure() for op in self.operands)

        def match(labels: Labels) -> bool:
            for part in parts:
                if part(labels):
                    return True
            return False

        return match


# ---------------------------------------------------------------------------
# Helpers over whole trees


def label_keys(node: Node) -> frozenset[str]:
    """Every label key the tree mentions: its result depends on these labels only."""
    keys = set()
    for n in node.walk():
        label = getattr(n, "label", None)
        if label is not None:
            keys.add(label)
    return frozenset(keys)


def uses_global(node: Node) -> bool:
    return any(isinstance(n, Global) for n in node.walk())


def render(node: Node) -> str:
    return str(node)


def compile_closure(node: Node) -> Matcher:
    """Matcher built from nested closures; slower than :func:`compile_node`, never fails."""
    return node.closure()


def compile_node(node: Node) -> Matcher:
    """Compile the tree to one Python function (a single call per evaluation).

    The generated source only contains ``repr()`` literals of label keys and values and
    names of frozensets we pass in, so nothing from the selector text is executed. Very
    deep trees exceed Python's compiler nesting limits; they fall back to closures.
    """
    consts: dict[str, object] = {}
    try:
        expr = node.source(consts)
        code = compile(
            f"def _match(labels):\n    get = labels.get\n    return {expr}\n",
            "<selector>",
            "exec",
        )
    except (RecursionError, SyntaxError, MemoryError):
        return compile_closure(node)
    namespace: dict[str, object] = dict(consts)
    exec(code, namespace)  # noqa: S102 - generated from validated literals only
    fn = namespace["_match"]
    assert callable(fn)
    return fn  # type: ignore[return-value]
