"""Recursive-descent parser for Calico's selector language.

Grammar (``&&`` binds tighter than ``||``; ``!`` applies to one operation or group)::

    selector  := <empty> | or_expr EOF
    or_expr   := and_expr ( "||" and_expr )*
    and_expr  := operation ( "&&" operation )*
    operation := "!"* ( has(L) | all() | global() | "(" or_expr ")"
                      | L ("==" | "!=" | contains | starts with | ends with) S
                      | L ("in" | "not in") "{" [ S ("," S)* [","] ] "}" )

A run of ``!`` collapses (an even count cancels). A trailing comma inside a set is
accepted, as Calico's parser accepts it. An empty or blank selector is ``all()``.
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
from .errors import SelectorError
from .tokenizer import Tok, Token, tokenize

_VALUE_OPS = {
    Tok.EQ: LabelEq,
    Tok.NE: LabelNe,
    Tok.CONTAINS: LabelContains,
    Tok.STARTS_WITH: LabelStartsWith,
    Tok.ENDS_WITH: LabelEndsWith,
}

_OPERATION_START = "a label, has(), all(), global(), '!' or '('"


class _Parser:
    __slots__ = ("text", "tokens", "i")

    def __init__(self, text: str, tokens: list[Token]):
        self.text = text
        self.tokens = tokens
        self.i = 0

    def fail(self, tok: Token, expected: str) -> SelectorError:
        return SelectorError(self.text, tok.pos, expected, tok.describe())

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.tokens[self.i].kind is Tok.OR:
            self.i += 1
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.operation()]
        while self.tokens[self.i].kind is Tok.AND:
            self.i += 1
            operands.append(self.operation())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def operation(self) -> Node:
        tokens = self.tokens
        negated = False
        while tokens[self.i].kind is Tok.NOT:
            negated = not negated
            self.i += 1
        tok = tokens[self.i]
        kind = tok.kind
        node: Node
        if kind is Tok.HAS:
            node = Has(tok.value)
            self.i += 1
        elif kind is Tok.ALL:
            node = All()
            self.i += 1
        elif kind is Tok.GLOBAL:
            node = Global()
            self.i += 1
        elif kind is Tok.LABEL:
            node = self.comparison(tok)
        elif kind is Tok.LPAREN:
            self.i += 1
            node = self.or_expr()
            close = tokens[self.i]
            if close.kind is not Tok.RPAREN:
                raise self.fail(close, "')'")
            self.i += 1
        else:
            raise self.fail(tok, _OPERATION_START)
        if negated:
            # A parenthesised group can itself be a Not ("!(!a == 'x')"). Calico keeps
            # Not(Not(..)) and prints "!!a == ..", which re-parses to something else;
            # collapsing here keeps the canonical form a fixed point.
            node = node.operand if isinstance(node, Not) else Not(node)
        return node

    def comparison(self, label: Token) -> Node:
        tokens = self.tokens
        op = tokens[self.i + 1]
        cls = _VALUE_OPS.get(op.kind)
        if cls is not None:
            value = tokens[self.i + 2]
            if value.kind is not Tok.STRING:
                raise self.fail(value, "a quoted string")
            self.i += 3
            return cls(label.value, value.value)
        if op.kind is Tok.IN or op.kind is Tok.NOT_IN:
            brace = tokens[self.i + 2]
            if brace.kind is not Tok.LBRACE:
                raise self.fail(brace, "'{' starting a set of quoted strings")
            self.i += 3
            values: list[str] = []
            while tokens[self.i].kind is Tok.STRING:
                values.append(tokens[self.i].value)
                self.i += 1
                if tokens[self.i].kind is not Tok.COMMA:
                    break
                self.i += 1
            close = tokens[self.i]
            if close.kind is not Tok.RBRACE:
                after_value = tokens[self.i - 1].kind is Tok.STRING
                raise self.fail(close, "',' or '}'" if after_value else "a quoted string or '}'")
            self.i += 1
            return (LabelIn if op.kind is Tok.IN else LabelNotIn)(label.value, tuple(values))
        raise self.fail(
            op,
            "an operator (==, !=, in, not in, contains, starts with, ends with) "
            f"after label {label.value!r}",
        )


def parse_node(text: str) -> Node:
    """Parse selector text to a tree; raises SelectorError (uncached)."""
    if not isinstance(text, str):
        raise TypeError(f"selector must be a string, not {type(text).__name__}")
    tokens = tokenize(text)
    if tokens[0].kind is Tok.EOF:
        return All()
    parser = _Parser(text, tokens)
    try:
        node = parser.or_expr()
    except RecursionError:
        raise SelectorError(
            text, tokens[parser.i].pos, "a selector nested less deeply (too many parentheses)"
        ) from None
    end = tokens[parser.i]
    if end.kind is not Tok.EOF:
        raise parser.fail(end, "'&&', '||' or the end of the selector")
    return node
