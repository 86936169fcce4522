"""The domain index (`connectproxy.matching.domains.DomainIndex`): a host looked up by its
suffixes, label by label, must answer exactly as the patterns' own rules say, for every kind of
pattern and at every edge: the host equal to the domain, deeper subdomains, and trailing text
that is not a label boundary.

The property test at the end checks the index against `DomainPattern.matches` over random hosts
and pattern lists, so the two definitions cannot drift apart.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectproxy.matching.domains import DomainIndex, DomainPattern, parse_domain_pattern


def index(*texts: str) -> DomainIndex:
    return DomainIndex(parse_domain_pattern(t) for t in texts)


def matched(idx: DomainIndex, host: str) -> str | None:
    pattern = idx.match(host)
    return None if pattern is None else pattern.text


@pytest.mark.parametrize(
    ("host", "expect"),
    [
        ("azure-devices.net", ".azure-devices.net"),  # the domain itself
        ("hub.azure-devices.net", ".azure-devices.net"),
        ("a.b.c.hub.azure-devices.net", ".azure-devices.net"),  # deeper subdomains
        ("evilazure-devices.net", None),  # shares text, not a label boundary
        ("azure-devices.net.evil.com", None),  # the domain inside, not at the end
        ("net", None),  # a suffix of the pattern is not the pattern
        ("devices.net", None),
    ],
)
def test_suffix_pattern(host: str, expect: str | None) -> None:
    assert matched(index(".azure-devices.net"), host) == expect


@pytest.mark.parametrize(
    ("host", "expect"),
    [
        ("blob.core.windows.net", None),  # not the domain itself
        ("acct.blob.core.windows.net", "*.blob.core.windows.net"),
        ("x.y.acct.blob.core.windows.net", "*.blob.core.windows.net"),
        ("evilblob.core.windows.net", None),
        ("core.windows.net", None),
    ],
)
def test_subdomains_pattern(host: str, expect: str | None) -> None:
    assert matched(index("*.blob.core.windows.net"), host) == expect


@pytest.mark.parametrize(
    ("host", "expect"),
    [
        ("download.microsoft.com", "download.microsoft.com"),
        ("x.download.microsoft.com", None),  # an exact pattern has no subdomains
        ("microsoft.com", None),
        ("evildownload.microsoft.com", None),
        ("download.microsoft.com.evil.com", None),
    ],
)
def test_exact_pattern(host: str, expect: str | None) -> None:
    assert matched(index("download.microsoft.com"), host) == expect


def test_kinds_under_one_domain_keep_their_own_meaning() -> None:
    exact_and_subdomains = index("example.com", "*.example.com")
    assert matched(exact_and_subdomains, "example.com") == "example.com"
    assert matched(exact_and_subdomains, "a.example.com") == "*.example.com"
    only_subdomains = index("*.example.com", "other.org")
    assert matched(only_subdomains, "example.com") is None
    only_exact = index("example.com", "other.org")
    assert matched(only_exact, "a.example.com") is None


def test_the_most_specific_pattern_answers() -> None:
    idx = index(".azure-devices.net", "hub.azure-devices.net", "*.hub.azure-devices.net")
    assert matched(idx, "hub.azure-devices.net") == "hub.azure-devices.net"
    assert matched(idx, "x.hub.azure-devices.net") == "*.hub.azure-devices.net"
    assert matched(idx, "other.azure-devices.net") == ".azure-devices.net"


def test_single_label_hosts_and_patterns() -> None:
    idx = index(".local", "intranet")
    assert matched(idx, "local") == ".local"
    assert matched(idx, "printer.local") == ".local"
    assert matched(idx, "intranet") == "intranet"
    assert matched(idx, "a.intranet") is None


def test_empty_index_matches_nothing() -> None:
    idx = DomainIndex(())
    assert len(idx) == 0
    assert idx.match("example.com") is None
    assert "example.com" not in idx


def test_repeated_patterns_are_held_once() -> None:
    idx = index(".example.com", ".Example.COM", "*.example.com", "example.com", ".example.com")
    assert len(idx) == 3
    assert matched(idx, "a.example.com") == ".example.com"  # the first of the same kind stays
    assert "example.com" in idx


def test_many_patterns_each_still_answers() -> None:
    texts = [f".d{i}.example" for i in range(10_000)]
    idx = index(*texts)
    assert len(idx) == 10_000
    assert matched(idx, "host.d9999.example") == ".d9999.example"
    assert matched(idx, "d0.example") == ".d0.example"
    assert matched(idx, "d10000.example") is None
    assert matched(idx, "xd1.example") is None


# --- the index against the patterns' own rules ---------------------------------------------------

LABELS = st.sampled_from(["a", "b", "ab", "ba", "x-y", "com", "net"])
HOSTS = st.lists(LABELS, min_size=1, max_size=5).map(".".join)
PATTERNS = st.tuples(st.sampled_from(["", ".", "*."]), HOSTS).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(PATTERNS, max_size=8), HOSTS)
def test_index_agrees_with_each_pattern(texts: list[str], host: str) -> None:
    parsed: list[DomainPattern] = [parse_domain_pattern(t) for t in texts]
    found = DomainIndex(parsed).match(host)
    if found is None:
        assert not any(p.matches(host) for p in parsed)
    else:
        assert found.matches(host)
        assert found in parsed
