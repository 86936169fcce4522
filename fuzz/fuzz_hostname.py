"""atheris target: host name normalisation and domain patterns.

Normalisation must be idempotent and produce a lowercase LDH name of at most 253 characters;
patterns must match their own domain according to their kind and never a look-alike.
"""

from __future__ import annotations

import re
import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from connectproxy.matching.domains import parse_domain_pattern
    from connectproxy.wire.hostnames import normalise_hostname

_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        name = normalise_hostname(text)
    except ValueError:
        pass
    else:
        if normalise_hostname(name) != name or normalise_hostname(name.upper() + ".") != name:
            raise AssertionError(f"normalisation is not idempotent for {text!r}")
        if len(name) > 253 or not all(_LDH.match(label) for label in name.split(".")):
            raise AssertionError(f"normalised name {name!r} is not an LDH name")
    try:
        pattern = parse_domain_pattern(text)
    except ValueError:
        return
    domain = pattern.domain
    if pattern.matches(domain) is (pattern.kind == "subdomains"):
        raise AssertionError(f"{pattern} and its own domain")
    # Neither ends in "." + domain: glued to a longer label, or followed by a label of its own.
    lookalikes = ("x" + domain, domain + ".lookalike-" + domain.rsplit(".", 1)[-1])
    if any(pattern.matches(host) for host in lookalikes):
        raise AssertionError(f"{pattern} matches a look-alike")
    if pattern.matches("a." + domain) is (pattern.kind == "exact"):
        raise AssertionError(f"{pattern} and a subdomain")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
