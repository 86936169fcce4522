"""The close filter of the admin API and `connectproxy tunnels --close`, without sockets."""

from __future__ import annotations

import ipaddress

import pytest

from connectproxy.server.tunnelfilter import (
    FilterError,
    TunnelFilter,
    parse_filter,
    parse_filter_args,
)


def match(f: TunnelFilter, **tunnel: object) -> bool:
    fields: dict[str, object] = {
        "tunnel_id": 7,
        "client": "plc-7",
        "user": None,
        "policy": "default",
        "host": "sensor.example.com",
        "ip": None,
    }
    fields.update(tunnel)
    return f.matches(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("empty", [{}, {"client": None}, {"id": None, "host": None}])
def test_an_empty_filter_is_refused(empty: dict[str, object]) -> None:
    with pytest.raises(FilterError, match="empty filter"):
        parse_filter(empty)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([], "JSON object"),
        ("client", "JSON object"),
        ({"clinet": "x"}, "unknown filter key 'clinet'"),
        ({"client": ""}, "non-empty string"),
        ({"client": 3}, "non-empty string"),
        ({"user": "u" * 513}, "longer than 512"),
        ({"id": "abc"}, "whole number"),
        ({"id": True}, "whole number"),
        ({"id": 1.5}, "whole number"),
        ({"host": "*bad*.com"}, "not a domain pattern"),
        ({"host": "exa mple.com"}, "not a domain pattern"),
    ],
)
def test_invalid_filters_say_why(data: object, says: str) -> None:
    with pytest.raises(FilterError, match=says):
        parse_filter(data)


def test_each_key_narrows_and_all_must_match() -> None:
    assert match(parse_filter({"id": 7}))
    assert match(parse_filter({"id": "7"}))
    assert not match(parse_filter({"id": 8}))
    assert match(parse_filter({"client": "plc-7"}))
    assert not match(parse_filter({"client": "plc-8"}))
    assert match(parse_filter({"user": "alice"}), user="alice")
    assert not match(parse_filter({"user": "alice"}))  # a tunnel without a user
    assert match(parse_filter({"policy": "default"}))
    assert not match(parse_filter({"policy": "updates"}))
    assert not match(parse_filter({"client": "plc-7", "policy": "updates"}))
    assert match(parse_filter({"client": "plc-7", "policy": "default", "id": 7}))


def test_host_is_a_domain_pattern_or_an_address() -> None:
    suffix = parse_filter({"host": ".example.com"})
    assert match(suffix) and match(suffix, host="example.com")
    assert not match(suffix, host="example.org")
    subdomains = parse_filter({"host": "*.example.com"})
    assert match(subdomains) and not match(subdomains, host="example.com")
    exact = parse_filter({"host": "Sensor.Example.COM."})
    assert match(exact) and not match(exact, host="other.example.com")
    address = parse_filter({"host": "192.0.2.1"})
    ip = ipaddress.ip_address("192.0.2.1")
    assert match(address, host="192.0.2.1", ip=ip)
    assert not match(address)
    v6 = parse_filter({"host": "[2001:db8::1]"})
    assert match(v6, host="2001:db8::1", ip=ipaddress.ip_address("2001:db8::1"))
    # A domain pattern never matches a tunnel to an address, even one spelled like a name.
    assert not match(parse_filter({"host": ".example.com"}), host="192.0.2.1", ip=ip)


def test_command_line_words_become_the_api_object() -> None:
    assert parse_filter_args(["client=plc-7", "host=.example.com"]) == {
        "client": "plc-7",
        "host": ".example.com",
    }
    with pytest.raises(FilterError, match="not KEY=VALUE"):
        parse_filter_args(["plc-7"])
    with pytest.raises(FilterError, match="given twice"):
        parse_filter_args(["client=a", "client=b"])
    with pytest.raises(FilterError, match="unknown filter key"):
        parse_filter_args(["name=a"])
    with pytest.raises(FilterError, match="non-empty"):
        parse_filter_args(["client="])
