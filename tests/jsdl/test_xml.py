"""The hardened parser refuses every construct an attacker could use."""

from __future__ import annotations

import pytest

from bes.errors import MalformedXml
from bes.jsdl.xml import parse_untrusted

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<lolz>&lol4;</lolz>"""
XXE_FILE = (
    b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""
)
XXE_PARAMETER = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd">%p;]><r/>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/r.dtd"><r/>"""
PLAIN_DOCTYPE = b"""<?xml version="1.0"?><!DOCTYPE r><r/>"""


@pytest.mark.parametrize(
    "data",
    [BILLION_LAUGHS, XXE_FILE, XXE_PARAMETER, EXTERNAL_DTD, PLAIN_DOCTYPE],
    ids=["billion-laughs", "xxe-file", "xxe-parameter-entity", "external-dtd", "doctype"],
)
def test_doctypes_and_entities_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedXml) as info:
        parse_untrusted(data)
    assert "passwd" not in str(info.value) and "root:" not in str(info.value)


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(MalformedXml):
        parse_untrusted(b"<a>" * 5000 + b"</a>" * 5000)


def test_huge_text_node_is_refused() -> None:
    with pytest.raises(MalformedXml):
        parse_untrusted(b"<a>" + b"x" * (11 * 1024 * 1024) + b"</a>")


@pytest.mark.parametrize("data", [b"", b"   ", b"not xml", b"<a><b></a>", b"<a>\xff\xfe</a>"])
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedXml):
        parse_untrusted(data)


def test_predefined_entities_and_character_references_still_work() -> None:
    root = parse_untrusted(b"<a>&lt;&amp;&#65;</a>")
    assert root.text == "<&A"


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = parse_untrusted(b"<a><!-- c --><?pi x?><b/></a>")
    assert [c.tag for c in root] == ["b"]
