"""Selector language: grammar, evaluation, errors, canonical form (tables).

Written from Calico's selector documentation and our reference notes
(/work/shared/reference/calico-semantics.md section 1).
"""

from __future__ import annotations

import pickle

import pytest

from tabby.selector import (
    ALL,
    NO_MATCH,
    Selector,
    SelectorError,
    and_,
    normalise,
    or_,
    parse,
)
from tabby.selector.ast import All, And, Has, LabelEq, LabelIn, Not, compile_closure

L512 = "k" * 512
L513 = "k" * 513

# (selector, label maps it matches, label maps it does not match)
MATCH_TABLE: list[tuple[str, list[dict[str, str]], list[dict[str, str]]]] = [
    # equality / inequality, both quote styles
    ('a == "b"', [{"a": "b"}, {"a": "b", "c": "d"}], [{}, {"a": "c"}, {"c": "b"}]),
    ("a == 'b'", [{"a": "b"}], [{"a": "B"}, {"a": "b "}]),
    ('a == ""', [{"a": ""}], [{}, {"a": "x"}]),
    ('a != "b"', [{}, {"a": "c"}, {"a": ""}], [{"a": "b"}]),
    # sets
    ('a in {"x", "y"}', [{"a": "x"}, {"a": "y"}], [{}, {"a": "z"}, {"a": ""}]),
    ("a in {}", [], [{}, {"a": ""}, {"a": "x"}]),
    ('a not in {"x", "y"}', [{}, {"a": "z"}], [{"a": "x"}, {"a": "y"}]),
    ("a not in {}", [{}, {"a": "x"}], []),
    ("a notin {'x'}", [{"a": "y"}, {}], [{"a": "x"}]),
    ("a not\tin {'x'}", [{"a": "y"}], [{"a": "x"}]),
    ("a in {'x',}", [{"a": "x"}], [{"a": ","}]),  # Calico accepts a trailing comma
    ('a in {"\'", \'"\', "c"}', [{"a": "'"}, {"a": '"'}, {"a": "c"}], [{}, {"a": "e"}]),
    # has / all / global / empty
    ("has(a)", [{"a": "x"}, {"a": ""}], [{}, {"b": "a"}]),
    ("!has(a)", [{}, {"b": "x"}], [{"a": ""}]),
    ("has( a )", [{"a": "1"}], [{}]),
    ("has(\ta\t)", [{"a": "1"}], [{}]),
    ("all()", [{}, {"a": "b"}], []),
    ("all( )", [{}], []),
    ("global()", [{}, {"a": "b"}], []),
    ("", [{}, {"a": "b"}], []),
    (" \t ", [{}], []),
    ("!all()", [], [{}, {"a": "b"}]),
    # substring operators
    ("a contains 'b'", [{"a": "abc"}, {"a": "b"}], [{}, {"a": "ac"}, {"b": "b"}]),
    ("a contains ''", [{"a": ""}, {"a": "x"}], [{}]),
    ("a starts with 'ab'", [{"a": "abc"}, {"a": "ab"}], [{}, {"a": "cab"}, {"a": "a"}]),
    ("a startswith 'ab'", [{"a": "abc"}], [{"a": "cab"}]),
    ("a starts  \t with 'ab'", [{"a": "abc"}], [{"a": "cab"}]),
    ("a ends with 'bc'", [{"a": "abc"}, {"a": "bc"}], [{}, {"a": "bca"}]),
    ("a endswith 'bc'", [{"a": "abc"}], [{"a": "bca"}]),
    ("a ends with ''", [{"a": "x"}], [{}]),
    # case-sensitive, exact comparisons
    ("a == 'B'", [{"a": "B"}], [{"a": "b"}]),
    ("A == 'b'", [{"A": "b"}], [{"a": "b"}]),
    # negation
    ("!a == 'x'", [{}, {"a": "y"}], [{"a": "x"}]),  # negates the whole comparison
    ("!(a == 'x')", [{}, {"a": "y"}], [{"a": "x"}]),
    ("!!has(a)", [{"a": "1"}], [{}]),
    ("!! ! has(a)", [{}], [{"a": "1"}]),
    ("! !!has(a)", [{}], [{"a": "1"}]),
    ("!!!has(a)", [{}], [{"a": "1"}]),
    ("!a != 'x'", [{"a": "x"}], [{}, {"a": "y"}]),
    ("!a not in {'x'}", [{"a": "x"}], [{}, {"a": "y"}]),
    ("!(!has(a) || has(b))", [{"a": "1"}], [{}, {"a": "1", "b": "2"}, {"b": "2"}]),
    # precedence: ! > && > ||
    ("a == 'x' || b == 'y' && c == 'z'", [{"a": "x"}, {"b": "y", "c": "z"}], [{"b": "y"}]),
    ("(a == 'x' || b == 'y') && c == 'z'", [{"a": "x", "c": "z"}], [{"a": "x"}]),
    ("!has(a) && has(b)", [{"b": "1"}], [{"a": "1", "b": "1"}, {}]),
    ("!has(a) || has(b)", [{}, {"a": "1", "b": "1"}], [{"a": "1"}]),
    ("!(has(a) && has(b))", [{}, {"a": "1"}], [{"a": "1", "b": "1"}]),
    ("has(a) && has(b) && has(c)", [{"a": "", "b": "", "c": ""}], [{"a": "", "b": ""}]),
    ("has(a) || has(b) || has(c)", [{"c": ""}], [{}]),
    ("((((has(a)))))", [{"a": ""}], [{}]),
    # whitespace is optional between tokens
    ("a=='x'&&b!='y'", [{"a": "x"}], [{"a": "x", "b": "y"}]),
    ("a in{'x'}", [{"a": "x"}], [{}]),
    ("has(a)||has(b)", [{"b": ""}], [{}]),
    ("\ta == 'x'\t", [{"a": "x"}], [{}]),
    ('a contains"x"', [{"a": "x"}], [{}]),
    # odd label keys: DNS prefixes, punctuation, keyword-named labels
    (
        "projectcalico.org/namespace == 'prod'",
        [{"projectcalico.org/namespace": "prod"}],
        [{"namespace": "prod"}],
    ),
    ("pcns.projectcalico.org/name == 'x'", [{"pcns.projectcalico.org/name": "x"}], [{}]),
    ("a-b_c.d/e-0 == 'v'", [{"a-b_c.d/e-0": "v"}], [{}]),
    ("-- == '.'", [{"--": "."}], [{}]),
    ("123 == '456'", [{"123": "456"}], [{}]),
    ("contains contains 'contains'", [{"contains": "xcontainsx"}], [{"contains": "x"}]),
    ("startswith starts with 'x'", [{"startswith": "xy"}], [{}]),
    ("endswith == 'x'", [{"endswith": "x"}], [{}]),
    ("in in {'in'}", [{"in": "in"}], [{"in": "x"}]),
    ("not in {'x'}", [{"not": "x"}], [{"not": "y"}, {}]),
    ("not not in {'x'}", [{"not": "y"}, {}], [{"not": "x"}]),
    ("has == 'x'", [{"has": "x"}], [{}]),
    ("has(has) && all == 'y'", [{"has": "", "all": "y"}], [{"all": "y"}]),
    ("global != 'x'", [{}], [{"global": "x"}]),
    ("ends ends with 'x'", [{"ends": "ax"}], [{"ends": "xa"}]),
    ("starts starts with 'x'", [{"starts": "xa"}], [{"starts": "ax"}]),
    ("notin notin {'x'}", [{"notin": "y"}], [{"notin": "x"}]),
    # values: any characters except the enclosing quote, no escapes
    ("a == 'x\"y'", [{"a": 'x"y'}], [{"a": 'x\\"y'}]),
    ('a == "it\'s"', [{"a": "it's"}], [{}]),
    ("a == 'with space && || ! ( )'", [{"a": "with space && || ! ( )"}], [{}]),
    ("a == 'back\\slash'", [{"a": "back\\slash"}], [{"a": "backslash"}]),
    ("a == 'ünïcödé ✓'", [{"a": "ünïcödé ✓"}], [{"a": "unicode"}]),
    ("a == 'line\nbreak'", [{"a": "line\nbreak"}], [{}]),
    # label length limit
    (f"{L512} == 'x'", [{L512: "x"}], [{}]),
    (f"has({L512})", [{L512: ""}], [{}]),
]


@pytest.mark.parametrize("text,matches,non_matches", MATCH_TABLE)
def test_selector_matches(text, matches, non_matches):
    sel = parse(text)
    canon = parse(str(sel))
    closure = compile_closure(sel.root)
    for labels in matches:
        assert sel.matches(labels), (text, labels)
        assert canon.matches(labels), (str(sel), labels)
        assert closure(labels)
    for labels in non_matches:
        assert not sel.matches(labels), (text, labels)
        assert not canon.matches(labels), (str(sel), labels)
        assert not closure(labels)


# (selector, 0-based error position, fragment of the "expected" text)
INVALID_TABLE: list[tuple[str, int, str]] = [
    ("a == ", 5, "a quoted string"),
    ("b == b", 5, "a quoted string"),
    ("b contains b", 11, "a quoted string"),
    ("b starts with b", 14, "a quoted string"),
    ("b ends with b", 12, "a quoted string"),
    ("'b1' == b", 0, "a label"),
    ("b", 1, "an operator"),
    ("a ", 2, "an operator"),
    ("a b", 2, "an operator"),
    ("a(", 1, "an operator"),
    ("!", 1, "a label"),
    ('foo == "bar" &', 13, "'&&'"),
    ('foo == "bar" |', 13, "'||'"),
    ("a = 'b'", 2, "'=='"),
    ("foo != ||", 7, "a quoted string"),
    ('foo in {"", ||', 12, "a quoted string or '}'"),
    ('foo in ""', 7, "'{'"),
    ("foo in {'a' 'b'}", 12, "',' or '}'"),
    ("foo in {,}", 8, "a quoted string or '}'"),
    ("foo in {'a',,}", 12, "a quoted string or '}'"),
    ("foo in {'a'", 11, "',' or '}'"),
    ("foo in 'a', 'b'}", 7, "'{'"),
    ('"FOO', 4, '" to close the string opened at position 0'),
    ("\"FOO'", 5, '" to close the string'),
    ("'FOO", 4, "' to close the string"),
    ("a == 'x", 7, "' to close the string opened at position 5"),
    ("(", 1, "a label"),
    ('(a == "foo"', 11, "')'"),
    (")", 0, "a label"),
    ("()", 1, "a label"),
    ("%", 0, "a label, quoted string"),
    ('a == "b" && %', 12, "a label, quoted string"),
    ('a == "b" || %', 12, "a label, quoted string"),
    ("has(foo) &&", 11, "a label"),
    ("has(foo) ||", 11, "a label"),
    ("has(foo) has(bar)", 9, "'&&', '||' or the end"),
    ("a == 'x')", 8, "'&&', '||' or the end"),
    ("a == 'x' b == 'y'", 9, "'&&', '||' or the end"),
    ("has()", 4, "a label name inside has()"),
    ("has( )", 5, "a label name inside has()"),
    ("has(foo", 7, "')' to close has("),
    ("has(foo bar)", 8, "')' to close has("),
    ("has (a)", 4, "an operator"),  # "has" is a label unless "(" follows at once
    ("all(", 4, "')' to close all("),
    ("all(x)", 4, "')' to close all("),
    ("global(", 7, "')' to close global("),
    ("label inf 'x'", 6, "an operator"),
    ("a ends withs 'x'", 2, "an operator"),
    ("a containsx 'x'", 2, "an operator"),
    ("a not inx {'x'}", 2, "an operator"),
    ("a starts 'x'", 2, "an operator"),
    ("a == 'x' && && b == 'y'", 12, "a label"),
    ("a == 'x'\n", 8, "a label, quoted string"),  # only space and tab are whitespace
    ("\na == 'x'", 0, "a label, quoted string"),
    ("a == 'x' & b", 9, "'&&'"),
    ("a ! = 'x'", 4, "'=='"),
    ("a [ 'x'", 2, "an operator"),
    ("ns:a == 'x'", 2, "an operator"),
    ("a == 'x' && b: == 'y'", 13, "an operator"),
    ("é == 'x'", 0, "a label, quoted string"),
    (f"{L513} == 'x'", 0, "at most 512 characters"),
    (f"has({L513})", 4, "at most 512 characters"),
    (f"a == 'x' || {L513} == 'x'", 12, "at most 512 characters"),
    ("HAS(a)", 3, "an operator"),
    ("a == 'x' &&", 11, "a label"),
]


@pytest.mark.parametrize("text,position,expected", INVALID_TABLE)
def test_invalid_selector(text, position, expected):
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.text == text
    assert err.position == position, str(err)
    assert expected in err.expected, str(err)
    assert f"position {position}: expected " in str(err)


def test_error_message_format():
    with pytest.raises(SelectorError) as info:
        parse("a == ")
    assert str(info.value) == 'selector "a == " position 5: expected a quoted string'
    with pytest.raises(SelectorError) as info:
        parse("b == b")
    assert str(info.value) == (
        "selector \"b == b\" position 5: expected a quoted string, found label 'b'"
    )
    err = pickle.loads(pickle.dumps(info.value))
    assert (err.text, err.position, err.expected) == ("b == b", 5, "a quoted string")


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]


# (input, canonical form)
CANONICAL_TABLE: list[tuple[str, str]] = [
    ("", "all()"),
    ("   ", "all()"),
    (" all() ", "all()"),
    (" (all() )", "all()"),
    ("all( )", "all()"),
    ("global( )", "global()"),
    ("! (has( b)||! has(a ))", "!(has(b) || !has(a))"),
    ('! (a == "b"&&! c != "d")', '!(a == "b" && !c != "d")'),
    ("a=='b'", 'a == "b"'),
    ("(a=='b')", 'a == "b"'),
    ("((a=='b'))", 'a == "b"'),
    ("!(k == 'v')", '!k == "v"'),
    ("!!has(a)", "has(a)"),
    ("!!!has(a)", "!has(a)"),
    ("!(!a == 'x')", 'a == "x"'),  # Calico prints "!!a == ..."; we print the fixed point
    ('a == "\'"', 'a == "\'"'),
    ("a == '\"'", "a == '\"'"),
    ("a contains '\"'", "a contains '\"'"),
    ('a contains "\'"', 'a contains "\'"'),
    ("a startswith '\"'", "a starts with '\"'"),
    ("a starts   with 'x'", 'a starts with "x"'),
    ('a endswith "\'"', 'a ends with "\'"'),
    ("a!='\"'", "a != '\"'"),
    ("a notin {'x'}", 'a not in {"x"}'),
    ("a in {}", "a in {}"),
    ("a not in { }", "a not in {}"),
    ('a in {"d"}', 'a in {"d"}'),
    ('a in {"d", "a", "b"}', 'a in {"a", "b", "d"}'),
    ('a in {"z", "z", "x", "y", "x", "a"}', 'a in {"a", "x", "y", "z"}'),
    ("a in {'b', 'B', 'a', '_', '1'}", 'a in {"1", "B", "_", "a", "b"}'),  # byte order
    ("a in {'é', 'z', 'e'}", 'a in {"e", "z", "é"}'),
    ("a in {'x',}", 'a in {"x"}'),
    ("a in {'\"', \"'\"}", "a in {'\"', \"'\"}"),
    ("a == 'x' && b == 'y'", '(a == "x" && b == "y")'),
    ("a == 'x' && b == 'y' && c == 'z'", '(a == "x" && b == "y" && c == "z")'),
    ("(a == 'x' && b == 'y') && c == 'z'", '((a == "x" && b == "y") && c == "z")'),
    ("a == 'x' || b == 'y' && c == 'z'", '(a == "x" || (b == "y" && c == "z"))'),
    ("!(a == 'x' || b == 'y')", '!(a == "x" || b == "y")'),
    ("!(a == 'x') || !(b == 'y')", '(!a == "x" || !b == "y")'),
    ("has(a) && (has(b) || has(c))", "(has(a) && (has(b) || has(c)))"),
    ("contains contains 'x'", 'contains contains "x"'),
    ("global()", "global()"),
    ("all() && global()", "(all() && global())"),
]


@pytest.mark.parametrize("text,canonical", CANONICAL_TABLE)
def test_canonical_form(text, canonical):
    sel = parse(text)
    assert str(sel) == canonical
    again = parse(canonical)
    assert str(again) == canonical
    assert again == sel and hash(again) == hash(sel)
    assert again.unique_id == sel.unique_id
    assert normalise(text) == canonical


UNIQUE_IDS = [
    ("", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
    (" all() ", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
    ("! (has( b)||! has(a ))", "s:Iss0uCleLYv1GSv_pNm7hAO58kE9jAx1NKyG3Q"),
    ('! (a == "b"&&! c != "d")', "s:lh3haoY1ikTRkd4UZu0nWSaIBknYLPJLX16d-w"),
]


@pytest.mark.parametrize("text,uid", UNIQUE_IDS)
def test_unique_id_matches_calico(text, uid):
    assert parse(text).unique_id == uid


def test_normalise():
    assert normalise("  a=='b' \n") == 'a == "b"'
    assert normalise("\t\n") == "all()"
    assert normalise("  not valid  ") == "not valid"
    assert normalise(" a == ") == "a =="
    # Go's TrimSpace does not strip \x1c (Python's str.strip would).
    assert normalise("\x1ca == 'b'") == "\x1ca == 'b'"


def test_parse_is_cached_and_selectors_are_values():
    assert parse("a == 'b'") is parse("a == 'b'")
    assert parse("a == 'b'") == parse('a=="b"')
    assert len({parse("a == 'b'"), parse('a=="b"'), parse("(a == 'b')")}) == 1
    assert parse("has(a)") != parse("has(b)")
    assert repr(parse("has(a)")) == "Selector('has(a)')"
    assert pickle.loads(pickle.dumps(parse("has(a)"))) == parse("has(a)")


def test_uses_global():
    assert parse("global()").uses_global()
    assert parse("has(a) || !global()").uses_global()
    assert not parse("all()").uses_global()
    assert not parse("global == 'x'").uses_global()
    assert not parse("a == 'global()'").uses_global()


def test_label_keys():
    assert parse("a == 'x' && (has(b) || !c in {'y'})").label_keys == {"a", "b", "c"}
    assert parse("all() && !global()").label_keys == frozenset()


def test_map_labels_prefixes_every_label():
    sel = parse("!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))")
    assert str(sel.map_labels(lambda k: "visited/" + k)) == (
        '!(!((visited/k == "v" && has(visited/t)) || all()) && visited/a in {"b", "c"})'
    )
    ops = "k != 'v' || k contains 'v' || k starts with 'v' || k ends with 'v' || k not in {}"
    assert str(parse(ops).map_labels(lambda k: "pcns." + k)) == (
        '(pcns.k != "v" || pcns.k contains "v" || pcns.k starts with "v" || '
        'pcns.k ends with "v" || pcns.k not in {})'
    )
    prefixed = parse("team == 'x'").map_labels(lambda k: "pcns." + k)
    assert prefixed.matches({"pcns.team": "x"}) and not prefixed.matches({"team": "x"})
    with pytest.raises(ValueError, match="invalid selector label"):
        parse("a == 'x'").map_labels(lambda k: "bad key")
    with pytest.raises(ValueError, match="invalid selector label"):
        parse(f"has({'k' * 510})").map_labels(lambda k: "pcns." + k)


def test_replace_all():
    ns = "has(projectcalico.org/namespace)"
    assert str(parse("all()").replace_all(ns)) == ns
    assert str(parse("").replace_all(ns)) == ns
    assert str(parse("!all()").replace_all(ns)) == "!" + ns
    assert str(parse("!all()").replace_all("!" + ns)) == ns  # no "!!" left behind
    assert str(parse("a == 'all()' && all()").replace_all(ns)) == f'(a == "all()" && {ns})'
    assert str(parse("all() || b == 'x'").replace_all("x == 'y' && z == 'w'")) == (
        '((x == "y" && z == "w") || b == "x")'
    )
    assert str(parse("global()").replace_all(ns)) == "global()"
    assert parse("has(a)").replace_all(ns) == parse("has(a)")


def test_and_or_constructors():
    assert str(and_("a == 'b' && c == 'd'", "ns == 'x'")) == (
        '((a == "b" && c == "d") && ns == "x")'
    )
    # Same as combining the strings the way Calico's policy conversion does.
    assert and_("a == 'b' && c == 'd'", "ns == 'x'") == parse("(a == 'b' && c == 'd') && ns == 'x'")
    assert str(or_(parse("has(a)"), "has(b)", "has(c)")) == "(has(a) || has(b) || has(c))"
    assert and_("has(a)") == parse("has(a)")
    assert and_() == ALL and str(ALL) == "all()"
    assert or_() == NO_MATCH and not NO_MATCH.matches({})
    with pytest.raises(SelectorError):
        and_("has(a)", "bad bad")


def test_ast_invariants():
    with pytest.raises(ValueError):
        Not(Not(Has("a")))
    with pytest.raises(ValueError):
        And((Has("a"),))
    with pytest.raises(ValueError):
        LabelEq("a", "both ' and \"")
    with pytest.raises(ValueError):
        LabelEq("", "x")
    with pytest.raises(TypeError):
        Selector("a == 'b'")  # type: ignore[arg-type]
    node = LabelIn("a", ("y", "x", "y"))
    assert node.values == ("x", "y") and str(node) == 'a in {"x", "y"}'
    assert str(Selector(And((All(), Not(Has("a")))))) == "(all() && !has(a))"


def test_deeply_nested_selector():
    depth = 60
    text = "(" * depth + "has(a)" + ")" * depth
    assert parse(text).matches({"a": ""})
    chain = " && ".join(f"has(k{i})" for i in range(400))
    sel = parse(chain)
    assert sel.matches({f"k{i}": "" for i in range(400)})
    assert not sel.matches({f"k{i}": "" for i in range(399)})
    # Deep enough to exceed Python's compiler nesting: falls back to closures.
    nested = "has(z)"
    for i in range(110):
        nested = f"has(k{i}) && !({nested})"
    sel = parse(nested)
    assert str(parse(str(sel))) == str(sel)
    everything = {f"k{i}": "" for i in range(110)}
    assert sel.matches(everything) == compile_closure(sel.root)(everything)
    assert sel.matches({**everything, "z": ""}) != sel.matches(everything)
    with pytest.raises(SelectorError, match="nested less deeply"):
        parse("(" * 2000 + "has(a)" + ")" * 2000)
