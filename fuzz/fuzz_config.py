"""atheris target: the YAML config loader.

Any text is either a Config or a ConfigError whose message starts with the file name; anything
else (a traceback for a user mistake) is a crash. Paths resolve against an empty temporary folder
so no file named by the input can exist.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from connectproxy.configfile.errors import ConfigError
    from connectproxy.configfile.load import parse_config

BASE = Path(tempfile.mkdtemp(prefix="fuzz-config-"))


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        parse_config(text, "fuzz.yaml", BASE)
    except ConfigError as error:
        if not str(error).startswith("fuzz.yaml"):
            raise AssertionError(f"message does not name the file: {error}") from None


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
