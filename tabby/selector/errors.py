"""The one error type of the selector package."""

from __future__ import annotations

import json


class SelectorError(ValueError):
    """A selector that does not parse.

    ``text`` is the selector as given, ``position`` the 0-based character offset where
    parsing stopped (``len(text)`` when the input ended too early) and ``expected`` what
    the parser wanted there. ``found`` describes what it saw instead (None at the end of
    the input).
    """

    def __init__(self, text: str, position: int, expected: str, found: str | None = None):
        self.text = text
        self.position = position
        self.expected = expected
        self.found = found
        msg = (
            f"selector {json.dumps(text, ensure_ascii=False)} position {position}: "
            f"expected {expected}"
        )
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)

    def __reduce__(self):  # keep pickling (multiprocessing, caches) working
        return (type(self), (self.text, self.position, self.expected, self.found))
