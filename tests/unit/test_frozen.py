"""The model's frozen values (config/frozen.py) behave as the frozen dataclasses they replaced:
equal and hashed by their fields, secrets out of the repr, assignment refused, `replace` making
a new value through `__init__`."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from connectproxy.config.frozen import FrozenInstanceError, replace
from connectproxy.config.model import Admin, Client, Config, Listener, Policy, User
from connectproxy.matching.domains import parse_domain_pattern


def test_equal_and_hashed_by_fields() -> None:
    a = Policy("p", frozenset({443}), (parse_domain_pattern(".example.com"),))
    b = Policy("p", frozenset({443}), (parse_domain_pattern(".example.com"),))
    assert a == b and hash(a) == hash(b)
    assert a != replace(a, name="q")
    assert Listener("::", 3128) != ("::", 3128, "off", None)
    assert Config() == Config() and hash(Config()) == hash(Config())


def test_the_repr_names_the_fields_but_no_secret() -> None:
    assert repr(Listener("::", 3128)) == (
        "Listener(host='::', port=3128, proxy_protocol='off', tls=None)"
    )
    assert "secret" not in repr(User("u", "secret")) and "name='u'" in repr(User("u", "secret"))
    assert "token-value" not in repr(Admin(Path("/t"), "token-value"))


def test_assignment_is_refused() -> None:
    client = Client("site")
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'name'"):
        client.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del client.name
    assert client.network_set is client.network_set  # cached values are still kept


def test_replace_makes_the_value_again() -> None:
    config = Config(allow=Policy(name="other", mode="report"))
    assert config.allow.name == "default" and config.report_mode
    changed = replace(config, allow=Policy())
    assert not changed.report_mode and changed.policies["default"] == Policy()
    with pytest.raises(TypeError):
        replace(config, report_mode=True)


def test_copies_and_pickles_are_equal() -> None:
    listener = Listener("::", 3128)
    assert copy.copy(listener) == listener
    assert pickle.loads(pickle.dumps(Client("site", tls_names=("a",)))) == Client(
        "site", tls_names=("a",)
    )
