"""The CNI plugin's name checks are set operations (no `re` compile per exec): they must accept
exactly what the regular expressions of the spec and of Kubernetes accept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.cni import endpoint, spec
from tabby.cni.spec import CNIError

CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
NETNS_PATH = re.compile(r"^/[A-Za-z0-9_.:@+=,/-]*$")
LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(rf"^{LABEL}$")
SUBDOMAIN = re.compile(rf"^{LABEL}(\.{LABEL})*$")
QNAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

# Mostly the interesting characters, some of anything else (Unicode digits and letters,
# whitespace, a trailing newline that `$` would accept outside fullmatch).
ALPHABET = st.one_of(
    st.sampled_from("aZz09-_.:/@+=, \n\tİK٣"),
    st.characters(),
)
TEXT = st.text(ALPHABET, max_size=12)


@settings(max_examples=400)
@given(TEXT)
def test_identifier_is_the_container_id_pattern(text: str) -> None:
    assert spec.is_identifier(text) == bool(CONTAINER_ID.fullmatch(text))


@settings(max_examples=400)
@given(st.one_of(TEXT, TEXT.map(lambda t: "/" + t)))
def test_netns_path(text: str) -> None:
    assert spec._is_netns_path(text) == bool(NETNS_PATH.fullmatch(text))


@settings(max_examples=400)
@given(st.one_of(TEXT, st.lists(st.text("0123456789٣x", max_size=3), max_size=4).map(".".join)))
def test_version_tuple(text: str) -> None:
    m = VERSION.fullmatch(text)
    if m:
        assert spec.version_tuple(text) == (int(m[1]), int(m[2]), int(m[3]))
    else:
        with pytest.raises(CNIError):
            spec.version_tuple(text)


@settings(max_examples=400)
@given(st.one_of(TEXT, st.lists(st.text("a0-Z", max_size=3), max_size=4).map(".".join)))
def test_kubernetes_name_rules(text: str) -> None:
    assert endpoint._dns_label(text) == bool(DNS_LABEL.fullmatch(text))
    assert endpoint._subdomain(text) == bool(SUBDOMAIN.fullmatch(text))
    assert endpoint._qualified_name(text) == bool(QNAME.fullmatch(text))


@settings(max_examples=400)
@given(TEXT)
def test_name_part(text: str) -> None:
    want = re.sub(r"[^a-z0-9.-]", "-", text.lower()).strip("-.") or "x"
    assert endpoint.name_part(text) == want
