"""Distinguished names as users register them, in both forms grid people write."""

from __future__ import annotations

import pytest

from bes.certs import MalformedName, normalize_dn


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("/C=CH/O=CERN/CN=Alice Smith", "CN=Alice Smith,O=CERN,C=CH"),
        ("CN=Alice Smith,O=CERN,C=CH", "CN=Alice Smith,O=CERN,C=CH"),
        ("cn=Alice Smith, o=CERN, c=CH", "CN=Alice Smith,O=CERN,C=CH"),
        ("/DC=org/DC=terena/CN=host/bes.example.org", "CN=host/bes.example.org,DC=terena,DC=org"),
        ("/O=Grid/emailAddress=a@b.org/CN=Z", "CN=Z,emailAddress=a@b.org,O=Grid"),
        ("E=a@b.org,O=Grid", "emailAddress=a@b.org,O=Grid"),
        ("CN=Smith\\, Alice+UID=as,O=CERN", "CN=Smith\\, Alice+UID=as,O=CERN"),
    ],
)
def test_both_forms_give_one_canonical_string(written: str, canonical: str) -> None:
    assert normalize_dn(written) == canonical
    assert normalize_dn(canonical) == canonical


@pytest.mark.parametrize("text", ["", "Alice", "/Alice", "CN", "XX=1,O=2"])
def test_what_is_no_dn_is_refused(text: str) -> None:
    with pytest.raises(MalformedName):
        normalize_dn(text)
