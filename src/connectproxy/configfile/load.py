"""Reading the YAML configuration (docs/configuration.md) into the frozen `Config`.

An operator's typo must never silently weaken policy, so every key is checked: unknown keys,
wrong types and impossible values are errors that name the file, the key path (for example
`users[2].password_hash`) and the line, and say how to fix it. Files the config names are
checked now, so `check-config` finds a missing certificate before a restart does.

This module holds only the entry points; the work is done by `yamlreader` (YAML with line
numbers), `document` and the section modules it calls (validation), `files` (everything
validation reads from disk) and `errors` (how a message names its place). Two entry points share
one validation: `parse_config` for YAML text (with line numbers) and `config_from_mapping` for a
mapping built in Python (the squid.conf translator), without lines.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connectproxy.config.model import Config
from connectproxy.configfile.checker import Checker
from connectproxy.configfile.document import validate
from connectproxy.configfile.errors import ConfigError, Where
from connectproxy.configfile.yamlreader import read_yaml

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EMBEDDED_SOURCE",
    "config_from_mapping",
    "load_config",
    "load_default",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/connectproxy/connectproxy.yaml")
EMBEDDED_SOURCE = "<embedded default>"

# A list while the process is one of the console script's commands that answer and exit: each
# config read from YAML is kept in it with its YAML until the process ends, and the process ends
# without freeing them (process/entry.py).
keep_until_exit: list[object] | None = None


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
    """The embedded default (docs/configuration.md, "The embedded default"), shipped as
    package data so a fresh install serves. (importlib.resources is imported here: only this
    path needs it, and `explain --config FILE` should not pay for it.)"""
    from importlib import resources

    text = (
        resources.files("connectproxy.config").joinpath("default.yaml").read_text(encoding="utf-8")
    )
    return parse_config(text, EMBEDDED_SOURCE, DEFAULT_CONFIG_PATH.parent)


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Validate YAML `text`; `source` names it in messages, `base_dir` anchors relative paths."""
    with _collector_paused():
        data, line = read_yaml(text, source)
        config = validate(Checker(source, base_dir), data, Where(None, line))
    if keep_until_exit is not None:
        keep_until_exit.append((data, config))
    return config


def config_from_mapping(data: Mapping[str, Any], source: str, base_dir: Path) -> Config:
    """Validate a mapping shaped like the YAML file; errors carry key paths but no lines."""
    with _collector_paused():
        return validate(Checker(source, base_dir), data, Where(None, None))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Reading and checking a config makes objects by the hundred thousand that all live until
    it is done, and CPython's cyclic collector would walk them again and again finding nothing
    to free: 7% of explain's instructions on the benchmark's large config. Whatever cycles a
    failed load leaves are collected once the collector runs again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
