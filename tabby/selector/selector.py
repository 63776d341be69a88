"""The public Selector value: parse once, print canonically, match fast."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from functools import lru_cache

from .ast import All, And, Matcher, Node, Not, Or, compile_node, label_keys, uses_global
from .errors import SelectorError
from .parser import parse_node

# Go's strings.TrimSpace set (unicode.IsSpace), used by Calico's Normalise. Python's
# str.strip() would also strip \x1c-\x1f, which Go keeps.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class Selector:
    """A parsed selector. Immutable; equal and hashed by its canonical text.

    ``sel.matches(labels)`` evaluates it against a label mapping; the matcher is compiled
    on first use to a single Python function.
    """

    __slots__ = ("root", "matches", "_text", "_uid", "_keys")

    root: Node
    matches: Matcher

    def __init__(self, root: Node):
        if not isinstance(root, Node):
            raise TypeError(f"Selector needs a selector node, not {type(root).__name__}")
        self.root = root
        self._text = str(root)
        self._uid: str | None = None
        self._keys: frozenset[str] | None = None

    def __getattr__(self, name: str) -> Matcher:
        # Reached only while the ``matches`` slot is still empty: compile lazily, so
        # selectors that are only validated or printed never pay for compilation.
        if name == "matches":
            fn = compile_node(self.root)
            self.matches = fn
            return fn
        raise AttributeError(name)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Selector({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Selector):
            return self._text == other._text
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._text)

    def __reduce__(self):
        return (parse, (self._text,))

    @property
    def unique_id(self) -> str:
        """Calico's UniqueID: ``"s:" + base64url_nopad(SHA-224("s:" + canonical))``."""
        if self._uid is None:
            digest = hashlib.sha224(("s:" + self._text).encode()).digest()
            self._uid = "s:" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
        return self._uid

    @property
    def label_keys(self) -> frozenset[str]:
        """The label keys this selector mentions; its result depends on them only."""
        if self._keys is None:
            self._keys = label_keys(self.root)
        return self._keys

    def uses_global(self) -> bool:
        """True if ``global()`` appears anywhere in the selector."""
        return uses_global(self.root)

    def map_labels(self, fn: Callable[[str], str]) -> Selector:
        """A new selector with every label key rewritten by ``fn`` (e.g. add ``pcns.``).

        Raises ValueError if ``fn`` produces an invalid label key.
        """
        return Selector(self.root.map_labels(fn))

    def replace_all(self, replacement: Selector | str) -> Selector:
        """A new selector with every ``all()`` node replaced by ``replacement``.

        Works on the tree, so an ``"all()"`` inside a quoted value is left alone.
        """
        return Selector(self.root.replace_all(_as_selector(replacement).root))


def _as_selector(sel: Selector | str) -> Selector:
    if isinstance(sel, Selector):
        return sel
    if isinstance(sel, str):
        return parse(sel)
    raise TypeError(f"expected a Selector or selector text, not {type(sel).__name__}")


@lru_cache(maxsize=8192)
def _parse_cached(text: str) -> Selector:
    return Selector(parse_node(text))


def parse(text: str) -> Selector:
    """Parse selector text (LRU-cached); raises SelectorError for invalid input.

    As in Calico, only spaces and tabs are skipped: a newline is an error here (use
    :func:`normalise` or strip YAML block scalars first).
    """
    if not isinstance(text, str):
        raise TypeError(f"selector must be a string, not {type(text).__name__}")
    return _parse_cached(text)


def normalise(text: str) -> str:
    """Calico's Normalise: trimmed canonical form, or the trimmed input if it is invalid."""
    trimmed = text.strip(_GO_SPACE)
    try:
        return str(parse(trimmed))
    except SelectorError:
        return trimmed


def and_(*sels: Selector | str) -> Selector:
    """``(s1) && (s2) && ...`` as one And node; parenthesised operands stay nested.

    Equal to parsing the joined text, so its canonical form is what Calico gets when it
    combines selector strings the same way. No operands gives ``all()``.
    """
    roots = [_as_selector(s).root for s in sels]
    if not roots:
        return Selector(All())
    if len(roots) == 1:
        return Selector(roots[0])
    return Selector(And(tuple(roots)))


def or_(*sels: Selector | str) -> Selector:
    """``(s1) || (s2) || ...`` as one Or node. No operands gives ``!all()`` (no match)."""
    roots = [_as_selector(s).root for s in sels]
    if not roots:
        return Selector(Not(All()))
    if len(roots) == 1:
        return Selector(roots[0])
    return Selector(Or(tuple(roots)))


ALL = Selector(All())
NO_MATCH = Selector(Not(All()))
