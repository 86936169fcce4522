"""Reading the YAML configuration (SPEC section 3) into the frozen `Config` of `config.py`.

An operator's typo must never silently weaken policy, so every key is checked: unknown keys,
wrong types and impossible values are errors that name the file, the key path (for example
`users[2].password_hash`) and the line, and say how to fix it. Files the config names are
checked now, so `check-config` finds a missing certificate before a restart does.

Two entry points share one validator: `parse_config` for YAML text (with line numbers) and
`config_from_mapping` for a mapping built in Python (the squid.conf translator), without lines.

Conventions a reader needs: a key set to null (for example `upstream:` with all of its children
commented out) counts as absent and takes the default, except `metrics.listen: null`, which
disables metrics. Key paths index lists from 0, as Kubernetes and jq do.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from connectproxy.addresses import is_denied, normalise
from connectproxy.config import (
    AccessFormat,
    Allow,
    AllowMode,
    Client,
    Config,
    Destinations,
    DomainPattern,
    IPAddress,
    IPNetwork,
    Limits,
    Listener,
    ListenerTLS,
    Log,
    LogFormat,
    Metrics,
    ProxyProtocolMode,
    Strategy,
    Timeouts,
    Upstream,
    UpstreamProxy,
    User,
)
from connectproxy.hostnames import normalise_hostname, parse_domain_pattern
from connectproxy.netset import NetworkSet
from connectproxy.passwords import Htpasswd, HtpasswdError, check_hash_format

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EMBEDDED_SOURCE",
    "ConfigError",
    "config_from_mapping",
    "load_config",
    "load_default",
    "parse_config",
    "summarize",
]

DEFAULT_CONFIG_PATH = Path("/etc/connectproxy/connectproxy.yaml")
EMBEDDED_SOURCE = "<embedded default>"

_Choice = TypeVar("_Choice", bound=str)


# --- errors -----------------------------------------------------------------------------------


def _locate(file: str, line: int | None, key_path: str | None, message: str) -> str:
    """Format as FILE:LINE: KEY.PATH: message, leaving out what is unknown.

    FILE:LINE first because editors and terminals turn it into a link to the line.
    """
    where = file if line is None else f"{file}:{line}"
    return f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}"


class ConfigError(Exception):
    """A configuration the proxy refuses to run with. `str()` is the whole message for the user."""

    def __init__(self, file: str, key_path: str | None, line: int | None, message: str) -> None:
        super().__init__(file, key_path, line, message)
        self.file = file
        self.key_path = key_path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return _locate(self.file, self.line, self.key_path, self.message)


# --- YAML with line numbers -------------------------------------------------------------------


class _LineMap(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key, and any key written twice.

    Duplicates are recorded rather than raised here so the validator can report them with the
    full key path, which the YAML layer does not know.
    """

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        # (key, line of the repetition, line of the first occurrence)
        self.duplicates: list[tuple[Any, int, int]] = []


class _LineList(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) whose mappings and sequences carry 1-based lines."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineMap:
    # `<<: *anchor` merges are allowed; a key written explicitly may override a merged one (that
    # is what merges are for), but two explicit spellings of one key are a duplicate.
    own_pairs = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)
    first_own = len(node.value) - own_pairs
    result = _LineMap(_line(node))
    own_keys: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if index >= first_own:
            if key in own_keys:
                result.duplicates.append((key, _line(key_node), result.key_lines[key]))
            own_keys.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = _line(key_node)
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    result = _LineList(_line(node))
    for item_node in node.value:
        result.append(loader.construct_object(item_node, deep=True))
        result.item_lines.append(_line(item_node))
    return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _read_yaml(text: str, source: str) -> tuple[Any, int | None]:
    """The document's data (None when empty) and the line it starts on."""
    loader = None
    try:
        loader = _LineLoader(text)  # already refuses unprintable characters
        node = loader.get_single_node()
        if node is None:
            return None, None
        return loader.construct_document(node), _line(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = ": ".join(part for part in (error.context, error.problem) if part)
        line = None if mark is None else mark.line + 1
        raise ConfigError(source, None, line, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as error:
        # A NUL byte or another unprintable character: the error knows only its offset.
        line = text.count("\n", 0, error.position) + 1
        message = f"character U+{error.character:04X} is not allowed in YAML; remove it"
        raise ConfigError(source, None, line, message) from None
    except yaml.YAMLError as error:
        raise ConfigError(source, None, None, f"not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(source, None, None, "the YAML is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


# --- entry points -----------------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """Load `path`; without one, /etc/connectproxy/connectproxy.yaml or else the embedded default.

    Relative paths inside the file are relative to the file's folder, made absolute now so a
    later change of working directory cannot change their meaning.
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return load_default()
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, None, "the file is not UTF-8 text") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(str(path), None, None, f"cannot read the file: {reason}") from None
    return parse_config(text, str(path), path.absolute().parent)


def load_default() -> Config:
    """The embedded default (SPEC 3.1), shipped as package data so a fresh install serves."""
    text = resources.files("connectproxy").joinpath("default.yaml").read_text(encoding="utf-8")
    return parse_config(text, EMBEDDED_SOURCE, DEFAULT_CONFIG_PATH.parent)


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Validate YAML `text`; `source` names it in messages, `base_dir` anchors relative paths."""
    data, line = _read_yaml(text, source)
    return _Validator(source, base_dir).config(data, _Where(None, line))


def config_from_mapping(data: Mapping[str, Any], source: str, base_dir: Path) -> Config:
    """Validate a mapping shaped like the YAML file; errors carry key paths but no lines."""
    return _Validator(source, base_dir).config(data, _Where(None, None))


# --- validation: places, shapes and scalars ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Where:
    """Where a value sits: its key path (None at the top level) and line (None if unknown)."""

    path: str | None
    line: int | None

    def key(self, name: str, line: int | None) -> _Where:
        return _Where(f"{self.path}.{name}" if self.path else name, line)

    def index(self, label: int | str, line: int | None) -> _Where:
        return _Where(f"{self.path or ''}[{label}]", line)

    def describe(self) -> str:
        """For "already used at ..." messages."""
        path = self.path or "the top level"
        return path if self.line is None else f"{path} (line {self.line})"


_TOP_KEYS = (
    "listen",
    "allow",
    "clients",
    "users",
    "htpasswd_file",
    "upstream",
    "destinations",
    "timeouts",
    "limits",
    "metrics",
    "log",
)
_UPSTREAM_PROXY_KEYS = (
    "url",
    "username",
    "password",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
)
_PROXY_PROTOCOLS: tuple[ProxyProtocolMode, ...] = ("off", "v1", "v2", "any")
_ALLOW_MODES: tuple[AllowMode, ...] = ("enforce", "report")
_STRATEGIES: tuple[Strategy, ...] = ("failover", "round_robin")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")
_ACCESS_FORMATS: tuple[AccessFormat, ...] = ("json", "squid")

# The dataclass defaults of config.py are the defaults of every absent key.
_DEFAULTS = Config()
_DEFAULT_LISTENER = Listener("::", 3128)
_DEFAULT_UPSTREAM = Upstream()

_T = TypeVar("_T")
_D = TypeVar("_D")


def _item_or(
    item: tuple[Any, _Where] | None, convert: Callable[[Any, _Where], _T], default: _D
) -> _T | _D:
    """`convert(value, where)` for a present key, else the default."""
    if item is None:
        return default
    return convert(*item)


def _describe(value: Any) -> str:
    """Name a YAML value's type for a message, never quoting it (it may be a secret)."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return "a date (quote it)"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def _quote_hint(value: Any) -> str:
    """YAML 1.1 turns unquoted yes/no/on/off into booleans, a classic surprise."""
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off as true/false: put the value in quotes)"
    return ""


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def _unknown_key(key: Any, keys: Sequence[str]) -> str:
    valid = ", ".join(keys)
    if not isinstance(key, str):
        return f"unknown key {key!r} (keys are names); valid keys here: {valid}"
    close = difflib.get_close_matches(key, keys, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {suggestion}valid keys here: {valid}"


def _port(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,4}", text) or int(text) > 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return int(text)


def _split_host_port(text: str, example: str = "0.0.0.0:3128") -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into host (without brackets) and port.

    Raises ValueError saying what is wrong; the caller adds where.
    """
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        if not rest.startswith(":"):
            raise ValueError('needs a port after the address, as in "[::]:3128"')
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValueError(f"{inside!r} is not an IPv6 address") from None
        return host, _port(rest[1:])
    host_text, colon, port_text = text.rpartition(":")
    if not colon:
        raise ValueError(f'needs a port, as in "{example}"')
    if ":" in host_text:
        raise ValueError('an IPv6 address goes in brackets, as in "[::]:3128"')
    if not host_text:
        raise ValueError(
            'needs a host: "[::]:3128" for every IPv4 and IPv6 address, "0.0.0.0:3128" for '
            "IPv4 only"
        )
    try:
        host = str(ipaddress.IPv4Address(host_text))
    except ValueError:
        try:
            host = normalise_hostname(host_text)
        except ValueError as error:
            raise ValueError(f"{host_text!r} is not an IP address or host name: {error}") from None
    return host, _port(port_text)


def _parse_proxy_url(url: str) -> tuple[Literal["http", "https"], str, int]:
    """An upstream URL is only scheme://host:port. Messages never repeat the URL: an operator
    may have put credentials in it, which is exactly one of the mistakes refused here."""
    scheme_text, separator, rest = url.partition("://")
    scheme_text = scheme_text.lower()
    if not separator or scheme_text not in ("http", "https"):
        raise ValueError('must start with http:// or https://, as in "http://proxy.example:8080"')
    scheme: Literal["http", "https"] = "https" if scheme_text == "https" else "http"
    if "@" in rest:
        raise ValueError(
            "must not contain credentials; set username and password_file for the upstream instead"
        )
    authority, _, path = rest.partition("/")
    if path or "?" in authority or "#" in authority:
        raise ValueError("must not have a path, query or fragment: only scheme://host:port")
    try:
        host, port = _split_host_port(authority, example=f"{scheme}://proxy.example:8080")
    except ValueError as error:
        raise ValueError(f"must be {scheme}://host:port: {error}") from None
    return scheme, host, port


def _unmap_network(network: IPNetwork) -> IPNetwork:
    """::ffff:10.0.0.0/104 means 10.0.0.0/8; sources are normalised the same way, so only the
    IPv4 form can ever match."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class _Section:
    """A YAML mapping with a fixed set of keys; unknown and duplicate keys fail on construction."""

    def __init__(self, check: _Validator, value: Any, where: _Where, keys: Sequence[str]) -> None:
        self.where = where
        self._check = check
        self._items: dict[str, tuple[Any, _Where]] = {}
        for key, item, item_where in check.entries(value, where):
            if not isinstance(key, str) or key not in keys:
                raise check.error(item_where, _unknown_key(key, keys))
            self._items[key] = (item, item_where)

    def has(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> tuple[Any, _Where] | None:
        """The value and its place; None when the key is absent or null (the default applies)."""
        item = self._items.get(key)
        if item is None or item[0] is None:
            return None
        return item

    def where_of(self, key: str) -> _Where:
        """The place of a key, or of the section when the key is absent."""
        item = self._items.get(key)
        return item[1] if item is not None else self.where.key(key, self.where.line)

    def require(self, key: str, hint: str) -> tuple[Any, _Where]:
        item = self.get(key)
        if item is None:
            raise self._check.error(self.where_of(key), f"is required: {hint}")
        return item


# --- validation: the sections, in file order --------------------------------------------------


class _Validator:
    """One validation run: the file's name and folder, and what it found along the way."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.warnings: list[str] = []
        # Client and user names label metrics and logs, so one name must mean one entry.
        self.names: dict[str, _Where] = {}
        # Where each listening address was written, to point at clashes.
        self.listener_places: dict[tuple[str, int], _Where] = {}
        self.metrics_place: _Where | None = None

    def error(self, where: _Where, message: str) -> ConfigError:
        return ConfigError(self.source, where.path, where.line, message)

    def warn(self, where: _Where, message: str) -> None:
        self.warnings.append(_locate(self.source, where.line, where.path, message))

    def config(self, data: Any, where: _Where) -> Config:
        if data is None:  # an empty file: every key takes its default
            data = {}
        if not isinstance(data, Mapping):
            raise self.error(
                where, f"the file must be a mapping of keys such as listen:, not {_describe(data)}"
            )
        top = _Section(self, data, where, _TOP_KEYS)
        listen = _item_or(top.get("listen"), self.listen, _DEFAULTS.listen)
        metrics = _item_or(top.get("metrics"), self.metrics, _DEFAULTS.metrics)
        self.check_metrics_address(listen, metrics)
        config = Config(
            listen=listen,
            allow=_item_or(top.get("allow"), self.allow, _DEFAULTS.allow),
            clients=_item_or(top.get("clients"), self.clients, ()),
            users=_item_or(top.get("users"), self.users, ()),
            htpasswd_file=_item_or(top.get("htpasswd_file"), self.htpasswd_file, None),
            upstream=_item_or(top.get("upstream"), self.upstream, None),
            destinations=_item_or(
                top.get("destinations"), self.destinations, _DEFAULTS.destinations
            ),
            timeouts=_item_or(top.get("timeouts"), self.timeouts, _DEFAULTS.timeouts),
            limits=_item_or(top.get("limits"), self.limits, _DEFAULTS.limits),
            metrics=metrics,
            log=_item_or(top.get("log"), self.log, _DEFAULTS.log),
            source=self.source,
        )
        self.warn_about_policy(config)
        return dataclasses.replace(config, warnings=tuple(self.warnings))

    # --- generic shapes ---

    def entries(self, value: Any, where: _Where) -> Iterator[tuple[Any, Any, _Where]]:
        """(key, value, place of the key) of a mapping, after refusing duplicate keys."""
        if not isinstance(value, Mapping):
            raise self.error(where, f"must be a mapping (key: value lines), not {_describe(value)}")
        if isinstance(value, _LineMap) and value.duplicates:
            key, line, first_line = value.duplicates[0]
            raise self.error(
                where.key(str(key), line),
                f"key written twice (first on line {first_line}); keep one",
            )
        for key, item in value.items():
            key_line = value.key_lines.get(key) if isinstance(value, _LineMap) else None
            yield key, item, where.key(str(key), key_line)

    def items(self, value: Any, where: _Where) -> list[tuple[Any, _Where]]:
        """The items of a list with the place of each."""
        if not isinstance(value, list | tuple):
            raise self.error(where, f"must be a list, not {_describe(value)}")
        lines: Sequence[int | None] = (
            value.item_lines if isinstance(value, _LineList) else [None] * len(value)
        )
        return [(item, where.index(i, lines[i])) for i, item in enumerate(value)]

    def string(self, value: Any, where: _Where) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"must be a string, not {_describe(value)}{_quote_hint(value)}")
        return value

    def integer(self, value: Any, where: _Where, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"must be a whole number, not {_describe(value)}")
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise self.error(where, f"must be {bounds}, not {value}")
        return value

    def duration(self, value: Any, where: _Where) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(where, f"must be a number of seconds, not {_describe(value)}")
        if not math.isfinite(value) or value <= 0:
            raise self.error(where, f"must be a positive, finite number of seconds, not {value}")
        return float(value)

    def boolean(self, value: Any, where: _Where) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, f"must be true or false, not {_describe(value)}")
        return value

    def choice(self, value: Any, where: _Where, choices: tuple[_Choice, ...]) -> _Choice:
        options = " | ".join(choices)
        if not isinstance(value, str):
            raise self.error(
                where, f"must be one of {options}, not {_describe(value)}{_quote_hint(value)}"
            )
        for option in choices:
            if value == option:
                return option
        close = difflib.get_close_matches(value, choices, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise self.error(where, f"must be one of {options}, not {value!r}{suggestion}")

    def name(self, value: Any, where: _Where) -> str:
        """A client, user or upstream user name: it appears in logs and metric labels."""
        text = self.string(value, where)
        if not text or text != text.strip():
            raise self.error(where, "must be a non-empty name without surrounding spaces")
        if _has_control(text):
            raise self.error(where, "must not contain control characters")
        if text == "-":
            raise self.error(where, "'-' is reserved (it means 'no client' in metrics and logs)")
        return text

    def claim_name(self, name: str, where: _Where) -> None:
        first = self.names.get(name)
        if first is not None:
            raise self.error(
                where,
                f"{name!r} is already the name of {first.describe()}; "
                "client and user names must be unique",
            )
        self.names[name] = where

    def readable_file(self, value: Any, where: _Where) -> Path:
        """An existing, readable file, relative to the config's folder."""
        text = self.string(value, where)
        if not text:
            raise self.error(where, "must be a file path, not an empty string")
        path = self.base_dir / text
        try:
            with path.open("rb"):
                pass
        except OSError as error:
            reason = error.strerror or str(error)
            raise self.error(where, f"cannot read {str(path)!r}: {reason}") from None
        except ValueError as error:  # a NUL byte in the path
            raise self.error(where, f"not a usable path: {error}") from None
        return path

    def network(self, value: Any, where: _Where) -> IPNetwork:
        """A CIDR or single address; host bits must be zero so the intent is unambiguous."""
        if not isinstance(value, str):
            raise self.error(
                where, f'must be a network such as "10.0.0.0/8", not {_describe(value)}'
            )
        try:
            network = ipaddress.ip_network(value)
        except ValueError:
            try:
                loose = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise self.error(
                    where,
                    f"{value!r} is not an IP address or CIDR network "
                    '(for example "10.0.0.0/8", "192.168.1.10" or "fd00::/8")',
                ) from None
            raise self.error(
                where,
                f'{value!r} has host bits set; the network is "{loose}" '
                f'(or write "{value.split("/")[0]}" for the single address)',
            ) from None
        return _unmap_network(network)

    def networks(self, value: Any, where: _Where) -> tuple[IPNetwork, ...]:
        return tuple(self.network(item, at) for item, at in self.items(value, where))

    def domain_patterns(self, value: Any, where: _Where) -> tuple[DomainPattern, ...]:
        patterns = []
        for item, at in self.items(value, where):
            text = self.string(item, at)
            try:
                patterns.append(parse_domain_pattern(text))
            except ValueError as error:
                raise self.error(
                    at,
                    f'{text!r} is not a domain pattern: {error}; write ".example.com" '
                    '(the domain and its subdomains), "*.example.com" (subdomains only) or '
                    '"example.com" (exactly that host)',
                ) from None
        return tuple(patterns)

    def address(self, value: Any, where: _Where) -> tuple[str, int]:
        """A "host:port" or "[v6]:port" listening address."""
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, list | tuple):
                hint = '; quote "[v6]:port" addresses, since YAML reads an unquoted [..] as a list'
            raise self.error(
                where, f'must be "host:port" such as "0.0.0.0:3128", not {_describe(value)}{hint}'
            )
        try:
            return _split_host_port(value)
        except ValueError as error:
            raise self.error(where, f"{value!r}: {error}") from None

    def ip_address(self, value: Any, where: _Where) -> IPAddress:
        text = self.string(value, where)
        try:
            return normalise(ipaddress.ip_address(text))
        except ValueError:
            raise self.error(where, f"{text!r} is not an IP address") from None

    # --- listen ---

    def listen(self, value: Any, where: _Where) -> tuple[Listener, ...]:
        # One listener may be written without the list around it.
        is_list = isinstance(value, list | tuple)
        entries = self.items(value, where) if is_list else [(value, where)]
        if not entries:
            raise self.error(
                where, "needs at least one listener; remove the key for the default [::]:3128"
            )
        listeners: list[Listener] = []
        for entry, at in entries:
            listener = self.listener(entry, at)
            first = self.listener_places.get((listener.host, listener.port))
            if first is not None:
                raise self.error(at, f"{listener.address} is already listed at {first.describe()}")
            self.listener_places[(listener.host, listener.port)] = at
            listeners.append(listener)
        return tuple(listeners)

    def listener(self, value: Any, where: _Where) -> Listener:
        if not isinstance(value, Mapping):
            host, port = self.address(value, where)
            return Listener(host, port)
        section = _Section(self, value, where, ("address", "proxy_protocol", "tls"))
        host, port = self.address(*section.require("address", 'for example "0.0.0.0:3128"'))
        proxy_protocol = _item_or(
            section.get("proxy_protocol"), self.proxy_protocol, _DEFAULT_LISTENER.proxy_protocol
        )
        tls = _item_or(section.get("tls"), self.listener_tls, None)
        return Listener(host, port, proxy_protocol, tls)

    def proxy_protocol(self, value: Any, where: _Where) -> ProxyProtocolMode:
        if value is False:  # YAML 1.1 reads an unquoted `off` as false
            return "off"
        return self.choice(value, where, _PROXY_PROTOCOLS)

    def listener_tls(self, value: Any, where: _Where) -> ListenerTLS:
        keys = ("cert_file", "key_file", "client_ca_file", "require_client_cert")
        section = _Section(self, value, where, keys)
        cert = self.readable_file(*section.require("cert_file", "the server certificate (PEM)"))
        key = self.readable_file(*section.require("key_file", "the server's private key (PEM)"))
        client_ca = _item_or(section.get("client_ca_file"), self.readable_file, None)
        require = _item_or(section.get("require_client_cert"), self.boolean, False)
        if require and client_ca is None:
            raise self.error(
                section.where_of("require_client_cert"),
                "needs client_ca_file: the CA that signs the client certificates to accept",
            )
        return ListenerTLS(cert, key, client_ca, require)

    # --- allow ---

    def allow(self, value: Any, where: _Where) -> Allow:
        section = _Section(self, value, where, ("ports", "domains", "networks", "mode"))
        return Allow(
            ports=_item_or(section.get("ports"), self.ports, _DEFAULTS.allow.ports),
            domains=_item_or(section.get("domains"), self.domain_patterns, ()),
            networks=_item_or(section.get("networks"), self.networks, ()),
            mode=_item_or(section.get("mode"), self.allow_mode, _DEFAULTS.allow.mode),
        )

    def ports(self, value: Any, where: _Where) -> frozenset[int]:
        return frozenset(self.integer(item, at, 1, 65535) for item, at in self.items(value, where))

    def allow_mode(self, value: Any, where: _Where) -> AllowMode:
        return self.choice(value, where, _ALLOW_MODES)

    # --- clients, users, htpasswd_file ---

    def clients(self, value: Any, where: _Where) -> tuple[Client, ...]:
        clients = []
        for item, at in self.items(value, where):
            section = _Section(self, item, at, ("name", "networks", "tls_names"))
            name_value, name_at = section.require("name", "a label for logs and metrics")
            name = self.name(name_value, name_at)
            networks = _item_or(section.get("networks"), self.networks, ())
            tls_names = _item_or(section.get("tls_names"), self.tls_names, ())
            if not networks and not tls_names:
                raise self.error(
                    at,
                    "a client needs networks or tls_names (clients are admitted without a "
                    "password; to admit by password, use users)",
                )
            self.claim_name(name, name_at)
            clients.append(Client(name, networks, tls_names))
        return tuple(clients)

    def tls_names(self, value: Any, where: _Where) -> tuple[str, ...]:
        names = []
        for item, at in self.items(value, where):
            text = self.string(item, at)
            if not text or _has_control(text):
                raise self.error(at, "must be a certificate name (subject CN or DNS SAN)")
            names.append(text)
        return tuple(names)

    def users(self, value: Any, where: _Where) -> tuple[User, ...]:
        users = []
        for item, at in self.items(value, where):
            section = _Section(self, item, at, ("name", "password_hash", "networks"))
            name_value, name_at = section.require("name", "the Basic user name")
            name = self.basic_user_name(name_value, name_at)
            password_hash = self.password_hash(
                *section.require("password_hash", "create one with `connectproxy hash-password`")
            )
            networks = _item_or(section.get("networks"), self.networks, ())
            self.claim_name(name, name_at)
            users.append(User(name, password_hash, networks))
        return tuple(users)

    def basic_user_name(self, value: Any, where: _Where) -> str:
        name = self.name(value, where)
        if ":" in name:
            raise self.error(where, "must not contain ':' (Basic credentials are user:password)")
        return name

    def password_hash(self, value: Any, where: _Where) -> str:
        text = self.string(value, where)
        try:
            check_hash_format(text)
        except ValueError as error:
            # Never repeat the value: it may well be a real password.
            if "$" not in text:
                raise self.error(
                    where,
                    "this looks like a plaintext password, which is refused; run "
                    "`connectproxy hash-password` and put its output here",
                ) from None
            raise self.error(where, str(error)) from None
        return text

    def htpasswd_file(self, value: Any, where: _Where) -> Path:
        """Checked now, entries included, so check-config catches a broken file."""
        path = self.readable_file(value, where)
        try:
            Htpasswd.load(path)
        except HtpasswdError as error:
            raise self.error(where, str(error)) from None
        return path

    # --- upstream ---

    def upstream(self, value: Any, where: _Where) -> Upstream:
        section = _Section(self, value, where, ("proxies", "strategy", "direct_domains"))
        proxies_value, proxies_at = section.require(
            "proxies", "list the upstream proxies (or remove upstream to connect directly)"
        )
        proxies = tuple(
            self.upstream_proxy(item, at) for item, at in self.items(proxies_value, proxies_at)
        )
        if not proxies:
            raise self.error(
                proxies_at, "needs at least one proxy (or remove upstream to connect directly)"
            )
        return Upstream(
            proxies=proxies,
            strategy=_item_or(section.get("strategy"), self.strategy, _DEFAULT_UPSTREAM.strategy),
            direct_domains=_item_or(section.get("direct_domains"), self.domain_patterns, ()),
        )

    def strategy(self, value: Any, where: _Where) -> Strategy:
        return self.choice(value, where, _STRATEGIES)

    def upstream_proxy(self, value: Any, where: _Where) -> UpstreamProxy:
        section = _Section(self, value, where, _UPSTREAM_PROXY_KEYS)
        url_value, url_at = section.require("url", 'for example "http://proxy.example:8080"')
        url = self.string(url_value, url_at)
        try:
            scheme, host, port = _parse_proxy_url(url)
        except ValueError as error:
            raise self.error(url_at, str(error)) from None
        username = _item_or(section.get("username"), self.basic_user_name, None)
        password = self.upstream_password(section)
        if password is not None and username is None:
            raise self.error(section.where_of("username"), "is required when a password is given")
        ca_file = _item_or(section.get("ca_file"), self.readable_file, None)
        cert_file = _item_or(section.get("cert_file"), self.readable_file, None)
        key_file = _item_or(section.get("key_file"), self.readable_file, None)
        if scheme == "http":
            for key, path in (
                ("ca_file", ca_file),
                ("cert_file", cert_file),
                ("key_file", key_file),
            ):
                if path is not None:
                    raise self.error(
                        section.where_of(key),
                        "only applies to an https:// upstream; remove it or change the url",
                    )
        if (cert_file is None) != (key_file is None):
            present = "cert_file" if cert_file is not None else "key_file"
            raise self.error(section.where_of(present), "cert_file and key_file go together")
        return UpstreamProxy(
            url=url,
            scheme=scheme,
            host=host,
            port=port,
            username=username,
            password=password,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )

    def upstream_password(self, section: _Section) -> str | None:
        inline = section.get("password")
        from_file = section.get("password_file")
        if inline is not None and from_file is not None:
            raise self.error(inline[1], "set either password or password_file, not both")
        if inline is not None:
            password = self.string(*inline)
            self.warn(
                inline[1],
                "the upstream password is written in the config file; "
                "prefer password_file (a file only the proxy's user can read)",
            )
            return password
        if from_file is not None:
            path = self.readable_file(*from_file)
            try:
                secret = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise self.error(from_file[1], f"{str(path)!r} is not UTF-8 text") from None
            except OSError as error:
                reason = error.strerror or str(error)
                raise self.error(from_file[1], f"cannot read {str(path)!r}: {reason}") from None
            # One trailing newline is what `echo secret > file` adds; "\r\n" counts as one.
            return secret.removesuffix("\n").removesuffix("\r")
        return None

    # --- destinations ---

    def destinations(self, value: Any, where: _Where) -> Destinations:
        section = _Section(self, value, where, ("deny_networks", "hosts"))
        deny = _DEFAULTS.destinations.deny_networks
        deny_item = section.get("deny_networks")
        if deny_item is not None:  # replaces the default list entirely
            deny = self.networks(*deny_item)
            if not deny:
                self.warn(
                    deny_item[1],
                    "empty: tunnels may reach loopback, link-local and multicast addresses",
                )
        hosts_item = section.get("hosts")
        hosts = () if hosts_item is None else self.hosts(*hosts_item, deny)
        return Destinations(deny, hosts)

    def hosts(
        self, value: Any, where: _Where, deny: tuple[IPNetwork, ...]
    ) -> tuple[tuple[str, tuple[IPAddress, ...]], ...]:
        result: dict[str, tuple[IPAddress, ...]] = {}
        denied = NetworkSet(deny)  # once, not once per address
        for key, item, key_at in self.entries(value, where):
            at = where.index(f'"{key}"', key_at.line)
            if not isinstance(key, str):
                raise self.error(at, f"must be a host name, not {_describe(key)}")
            try:
                name = normalise_hostname(key)
            except ValueError as error:
                raise self.error(at, f"{key!r} is not a host name: {error}") from None
            if name in result:
                raise self.error(at, f"{name!r} is listed twice (names are case-insensitive)")
            entries = [(item, at)] if isinstance(item, str) else self.items(item, at)
            if not entries:
                raise self.error(at, "needs at least one IP address")
            addresses = tuple(self.ip_address(address, a) for address, a in entries)
            for address in addresses:
                if is_denied(address, denied):
                    self.warn(
                        at, f"{address} is in deny_networks, so tunnels to {name} will be refused"
                    )
            result[name] = addresses
        return tuple(result.items())

    # --- timeouts, limits, metrics, log ---

    def timeouts(self, value: Any, where: _Where) -> Timeouts:
        keys = ("handshake", "connect", "idle", "shutdown_grace")
        section = _Section(self, value, where, keys)
        default = _DEFAULTS.timeouts
        return Timeouts(
            handshake=_item_or(section.get("handshake"), self.duration, default.handshake),
            connect=_item_or(section.get("connect"), self.duration, default.connect),
            idle=_item_or(section.get("idle"), self.duration, default.idle),
            shutdown_grace=_item_or(
                section.get("shutdown_grace"), self.duration, default.shutdown_grace
            ),
        )

    def limits(self, value: Any, where: _Where) -> Limits:
        keys = ("max_connections", "max_connections_per_source", "max_request_bytes")
        section = _Section(self, value, where, keys)
        default = _DEFAULTS.limits
        return Limits(
            max_connections=_item_or(
                section.get("max_connections"), self.positive_int, default.max_connections
            ),
            max_connections_per_source=_item_or(
                section.get("max_connections_per_source"),
                self.positive_int,
                default.max_connections_per_source,
            ),
            max_request_bytes=_item_or(
                section.get("max_request_bytes"), self.request_bytes, default.max_request_bytes
            ),
        )

    def positive_int(self, value: Any, where: _Where) -> int:
        return self.integer(value, where, low=1)

    def request_bytes(self, value: Any, where: _Where) -> int:
        # Below 1 KiB a sensor's ordinary CONNECT with a few headers no longer fits; above
        # 64 KiB the limit stops protecting memory.
        return self.integer(value, where, low=1024, high=65536)

    def metrics(self, value: Any, where: _Where) -> Metrics:
        section = _Section(self, value, where, ("listen",))
        if not section.has("listen"):
            return _DEFAULTS.metrics
        item = section.get("listen")
        if item is None:  # `listen: null` is how metrics are turned off
            return Metrics(None, None)
        host, port = self.address(*item)
        self.metrics_place = item[1]
        return Metrics(host, port)

    def log(self, value: Any, where: _Where) -> Log:
        section = _Section(self, value, where, ("level", "format", "access_log", "access_format"))
        default = _DEFAULTS.log
        return Log(
            level=_item_or(section.get("level"), self.log_level, default.level),
            format=_item_or(section.get("format"), self.log_format, default.format),
            access_log=_item_or(section.get("access_log"), self.access_log, default.access_log),
            access_format=_item_or(
                section.get("access_format"), self.access_format, default.access_format
            ),
        )

    def log_level(self, value: Any, where: _Where) -> str:
        return self.choice(value, where, _LOG_LEVELS)

    def log_format(self, value: Any, where: _Where) -> LogFormat:
        return self.choice(value, where, _LOG_FORMATS)

    def access_format(self, value: Any, where: _Where) -> AccessFormat:
        return self.choice(value, where, _ACCESS_FORMATS)

    def access_log(self, value: Any, where: _Where) -> str:
        text = self.string(value, where)
        if text == "-":
            return text
        if not text:
            raise self.error(where, 'must be "-" (standard output) or a file path')
        path = self.base_dir / text
        if not path.parent.is_dir():
            raise self.error(where, f"the folder {str(path.parent)!r} does not exist")
        return str(path)

    # --- whole-config checks ---

    def check_metrics_address(self, listen: tuple[Listener, ...], metrics: Metrics) -> None:
        """Two listeners on one address would only fail later, at bind time, less clearly."""
        for listener in listen:
            if (listener.host, listener.port) != (metrics.host, metrics.port):
                continue
            if self.metrics_place is not None:
                raise self.error(
                    self.metrics_place,
                    f"{listener.address} is also a proxy listener; "
                    "give metrics another port, or null to disable them",
                )
            # metrics.listen took its default, so the listener is the one written down.
            raise self.error(
                self.listener_places[(listener.host, listener.port)],
                f"{listener.address} is also the default metrics address; "
                "use another port, or set metrics.listen",
            )

    def warn_about_policy(self, config: Config) -> None:
        """Valid but probably not what the operator meant: say so at start-up."""
        where = _Where(None, None)
        if not config.clients and not config.users and config.htpasswd_file is None:
            self.warn(where, "no clients, users or htpasswd_file: every request will get 407")
        allow = config.allow
        if not allow.ports or (
            allow.mode == "enforce" and not allow.domains and not allow.networks
        ):
            self.warn(where, "allow admits no destination: every request will get 403")
        names_used = any(client.tls_names for client in config.clients)
        client_certs = any(
            listener.tls is not None and listener.tls.client_ca_file is not None
            for listener in config.listen
        )
        if names_used and not client_certs:
            self.warn(
                where, "clients with tls_names can never match: no listener has tls.client_ca_file"
            )


# --- the summary for check-config -------------------------------------------------------------


def _join(items: Iterable[object]) -> str:
    text = ", ".join(str(item) for item in items)
    return text or "(none)"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _listener_scope(listener: Listener, listeners: tuple[Listener, ...]) -> str | None:
    """Which clients an unspecified address takes, since "[::]" alone and "[::]" beside an
    IPv4 listener on its port differ (server.bind_listener)."""
    if listener.host == "0.0.0.0":
        return "every IPv4 address"
    if listener.host != "::":
        return None
    if any(o.port == listener.port and ":" not in o.host for o in listeners):
        return "every IPv6 address"
    return "every IPv4 and IPv6 address, one dual-stack socket; IPv4 only if the host has no IPv6"


def _listener_line(listener: Listener, listeners: tuple[Listener, ...]) -> str:
    details = []
    if (scope := _listener_scope(listener, listeners)) is not None:
        details.append(scope)
    if listener.proxy_protocol != "off":
        details.append(f"PROXY protocol {listener.proxy_protocol} required")
    tls = listener.tls
    if tls is not None:
        details.append(f"TLS with {tls.cert_file}")
        if tls.client_ca_file is not None:
            required = "required" if tls.require_client_cert else "optional"
            details.append(f"client certificates {required} (CA {tls.client_ca_file})")
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"listen: {listener.address}{suffix}"


def _upstream_lines(upstream: Upstream | None) -> list[str]:
    if upstream is None:
        return ["upstream: none (tunnels connect directly)"]
    lines = [f"upstream: strategy {upstream.strategy}"]
    for proxy in upstream.proxies:
        details = []
        if proxy.username is not None:
            details.append(f"as user {proxy.username}")
        if proxy.ca_file is not None:
            details.append(f"CA {proxy.ca_file}")
        if proxy.cert_file is not None:
            details.append(f"client certificate {proxy.cert_file}")
        suffix = f" ({'; '.join(details)})" if details else ""
        lines.append(f"upstream proxy: {proxy.name}{suffix}")
    lines.append(f"upstream.direct_domains: {_join(p.text for p in upstream.direct_domains)}")
    return lines


def summarize(config: Config) -> list[str]:
    """The effective policy as `check-config` prints it: what is admitted, where to, and how.

    User entries show names only, and upstream proxies show their user name at most: this text
    ends up in terminals, tickets and chat, so it never carries a secret or a hash.
    """
    allow = config.allow
    mode: str = allow.mode
    if mode == "report":
        mode += " (destinations outside the allowlist are let through and logged as would_deny)"
    lines = [f"source: {config.source}"]
    lines += [_listener_line(listener, config.listen) for listener in config.listen]
    lines += [
        f"allow.mode: {mode}",
        f"allow.ports: {_join(sorted(allow.ports))}",
        f"allow.domains: {_join(pattern.text for pattern in allow.domains)}",
        f"allow.networks: {_join(allow.networks)}",
    ]
    if not config.clients:
        lines.append("clients: (none)")
    for client in config.clients:
        admitted_by = []
        if client.networks:
            admitted_by.append(f"networks {_join(client.networks)}")
        if client.tls_names:
            admitted_by.append(f"tls_names {_join(client.tls_names)}")
        lines.append(f"client {client.name}: {'; '.join(admitted_by)}")
    if not config.users:
        lines.append("users: (none)")
    for user in config.users:
        origin = f"from {_join(user.networks)}" if user.networks else "from any address"
        lines.append(f"user {user.name}: Basic password, {origin}")
    lines.append(f"htpasswd_file: {config.htpasswd_file or '(none)'}")
    lines += _upstream_lines(config.upstream)
    destinations = config.destinations
    lines.append(f"destinations.deny_networks: {_join(destinations.deny_networks)}")
    lines.append(
        "destinations.hosts: "
        + _join(f"{name} -> {' '.join(map(str, addrs))}" for name, addrs in destinations.hosts)
    )
    timeouts, limits = config.timeouts, config.limits
    lines.append(
        f"timeouts: handshake {_seconds(timeouts.handshake)}, "
        f"connect {_seconds(timeouts.connect)}, idle {_seconds(timeouts.idle)}, "
        f"shutdown_grace {_seconds(timeouts.shutdown_grace)}"
    )
    lines.append(
        f"limits: max_connections {limits.max_connections}, "
        f"max_connections_per_source {limits.max_connections_per_source}, "
        f"max_request_bytes {limits.max_request_bytes}"
    )
    metrics = config.metrics
    if metrics.host is not None and metrics.port is not None:
        host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
        lines.append(f"metrics: http://{host}:{metrics.port}/metrics")
    else:
        lines.append("metrics: disabled")
    log = config.log
    lines.append(
        f"log: level {log.level}, format {log.format}, "
        f"access_log {'stdout' if log.access_log == '-' else log.access_log} "
        f"({log.access_format})"
    )
    return lines
