"""Lexer for Calico's selector language.

Rules (Calico semantics notes, section 1 "Selector language"):

* only space and tab separate tokens;
* labels are runs of ``a-z A-Z 0-9 _ . / -``, 1..512 characters;
* strings are ``"..."`` or ``'...'`` running to the next matching quote, with no
  escapes;
* the keyword operators (``contains``, ``starts with``/``startswith``,
  ``ends with``/``endswith``, ``not in``/``notin``, ``in``) are only looked for
  straight after a label and must end at a word boundary, so a label may itself be
  called ``contains`` or ``in``;
* ``has(label)``, ``all()`` and ``global()`` are single tokens (spaces and tabs allowed
  inside the parentheses, none between the word and ``(``).

The whole input is tokenised before parsing, as Calico does, so a lexical error anywhere
wins over a grammar error earlier in the text.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from .errors import SelectorError

MAX_LABEL_LENGTH = 512

LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_WHITESPACE = " \t"


class Tok(Enum):
    LABEL = "label"
    STRING = "quoted string"
    LBRACE = "'{'"
    RBRACE = "'}'"
    COMMA = "','"
    EQ = "'=='"
    NE = "'!='"
    IN = "'in'"
    NOT_IN = "'not in'"
    CONTAINS = "'contains'"
    STARTS_WITH = "'starts with'"
    ENDS_WITH = "'ends with'"
    NOT = "'!'"
    AND = "'&&'"
    OR = "'||'"
    LPAREN = "'('"
    RPAREN = "')'"
    HAS = "has()"
    ALL = "all()"
    GLOBAL = "global()"
    EOF = "end of selector"


class Token(NamedTuple):
    kind: Tok
    value: str
    pos: int

    def describe(self) -> str | None:
        """How an error message names this token (None for the end of input)."""
        if self.kind is Tok.EOF:
            return None
        if self.kind is Tok.LABEL:
            return f"label {self.value!r}"
        if self.kind is Tok.STRING:
            return f"string {self.value!r}"
        if self.kind is Tok.HAS:
            return f"has({self.value})"
        return self.kind.value


_PUNCT = {
    "(": Tok.LPAREN,
    ")": Tok.RPAREN,
    "{": Tok.LBRACE,
    "}": Tok.RBRACE,
    ",": Tok.COMMA,
}

# Operator keywords tried after a label, in this order ("not in" before "in").
_KEYWORD_OPS: tuple[tuple[tuple[str, ...], Tok], ...] = (
    (("contains",), Tok.CONTAINS),
    (("starts", "with"), Tok.STARTS_WITH),
    (("ends", "with"), Tok.ENDS_WITH),
    (("not", "in"), Tok.NOT_IN),
    (("in",), Tok.IN),
)

_OPERATORS_AFTER_LABEL = "an operator (==, !=, in, not in, contains, starts with, ends with)"


def is_valid_label(label: str) -> bool:
    """True if ``label`` can be written as a selector label key."""
    return 0 < len(label) <= MAX_LABEL_LENGTH and all(c in LABEL_CHARS for c in label)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WHITESPACE:
        i += 1
    return i


def _label_end(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in LABEL_CHARS:
        i += 1
    return i


def _at_word_boundary(text: str, i: int) -> bool:
    return i >= len(text) or text[i] not in LABEL_CHARS


def _match_keyword(text: str, i: int, words: tuple[str, ...]) -> int:
    """End offset of a (possibly multi-word) keyword at ``i``, or -1.

    Words may be separated by any run of spaces/tabs (including none: ``startswith``),
    and the last word must end at a word boundary.
    """
    j = i
    for n, word in enumerate(words):
        if n:
            j = _skip_ws(text, j)
        if not text.startswith(word, j):
            return -1
        j += len(word)
    # Calico also skips whitespace before this check; that only changes which error an
    # invalid selector gets ("b starts with b"), so we keep the more helpful one.
    return j if _at_word_boundary(text, j) else -1


def _cut_label(text: str, i: int, what: str) -> tuple[str, int]:
    end = _label_end(text, i)
    if end == i:
        found = repr(text[i]) if i < len(text) else None
        raise SelectorError(text, i, what, found)
    if end - i > MAX_LABEL_LENGTH:
        raise SelectorError(
            text, i, f"a label of at most {MAX_LABEL_LENGTH} characters", f"{end - i} characters"
        )
    return text[i:end], end


def _close_call(text: str, i: int, name: str) -> int:
    """Expect optional whitespace then ``)`` closing ``name(``; returns the offset after it."""
    i = _skip_ws(text, i)
    if i < len(text) and text[i] == ")":
        return i + 1
    raise SelectorError(
        text, i, f"')' to close {name}(", repr(text[i]) if i < len(text) else None
    )


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an EOF token; raises SelectorError."""
    tokens: list[Token] = []
    n = len(text)
    i = 0
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            tokens.append(Token(Tok.EOF, "", n))
            return tokens
        c = text[i]
        start = i
        kind = _PUNCT.get(c)
        if kind is not None:
            tokens.append(Token(kind, c, i))
            i += 1
        elif c == '"' or c == "'":
            close = text.find(c, i + 1)
            if close < 0:
                raise SelectorError(text, n, f"{c} to close the string opened at position {i}")
            tokens.append(Token(Tok.STRING, text[i + 1 : close], i))
            i = close + 1
        elif c in "=&|":
            pair = c + c
            if not text.startswith(pair, i):
                raise SelectorError(text, i, repr(pair), f"a single {c!r}")
            tokens.append(Token({"=": Tok.EQ, "&": Tok.AND, "|": Tok.OR}[c], pair, i))
            i += 2
        elif c == "!":
            if text.startswith("!=", i):
                tokens.append(Token(Tok.NE, "!=", i))
                i += 2
            else:
                tokens.append(Token(Tok.NOT, "!", i))
                i += 1
        elif tokens and tokens[-1].kind is Tok.LABEL:
            # Straight after a label only an operator may follow.
            for words, op in _KEYWORD_OPS:
                end = _match_keyword(text, i, words)
                if end >= 0:
                    tokens.append(Token(op, text[i:end], i))
                    i = end
                    break
            else:
                word_end = _label_end(text, i)
                found = repr(text[i:word_end]) if word_end > i else repr(c)
                raise SelectorError(
                    text, i, f"{_OPERATORS_AFTER_LABEL} after label {tokens[-1].value!r}", found
                )
        elif text.startswith("has(", i):
            i = _skip_ws(text, i + 4)
            label, i = _cut_label(text, i, "a label name inside has()")
            i = _close_call(text, i, "has")
            tokens.append(Token(Tok.HAS, label, start))
        elif text.startswith("all(", i):
            i = _close_call(text, i + 4, "all")
            tokens.append(Token(Tok.ALL, "all()", start))
        elif text.startswith("global(", i):
            i = _close_call(text, i + 7, "global")
            tokens.append(Token(Tok.GLOBAL, "global()", start))
        else:
            label, i = _cut_label(
                text, i, "a label, quoted string, operator, '!', '(' or ')'"
            )
            tokens.append(Token(Tok.LABEL, label, start))
