"""Calico's selector language and an incremental label index.

    from tabby.selector import parse, SelectorError
    sel = parse("app == 'web' && has(projectcalico.org/namespace)")
    sel.matches({"app": "web", "projectcalico.org/namespace": "prod"})  # True
    str(sel)  # '(app == "web" && has(projectcalico.org/namespace))'

Modules: ``tokenizer`` (lexer), ``parser`` (recursive descent), ``ast`` (nodes,
evaluation, canonical printing), ``selector`` (the public value, parse cache),
``restrict`` (what a selector requires, for indexing) and ``index`` (LabelIndex).
"""

from .errors import SelectorError
from .index import LabelIndex
from .selector import ALL, NO_MATCH, Selector, and_, normalise, or_, parse
from .tokenizer import MAX_LABEL_LENGTH, is_valid_label

__all__ = [
    "ALL",
    "MAX_LABEL_LENGTH",
    "NO_MATCH",
    "LabelIndex",
    "Selector",
    "SelectorError",
    "and_",
    "is_valid_label",
    "normalise",
    "or_",
    "parse",
]
