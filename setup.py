"""Build hook: compile the modules on the connection path to C with mypyc.

The source stays the plain, type-checked Python in `src/connectproxy/`; mypyc turns the modules
every connection runs through into extension modules that do the same thing with about a fifth
fewer instructions (README.md, "Performance"). The extension modules are built into the installed
package (`pip install .`), never beside the sources, so the source tree is never stale.

`CONNECTPROXY_PURE_PYTHON=1` skips the step, for a platform without a C compiler: the package then
runs as plain Python, with the same behaviour and the same tests, only slower.
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules a connection runs through, from accept to the access line, and those that read and
# check a large config item by item (the YAML subset reader, the validation of places, scalars,
# networks, policies and identities, password hashes, domain patterns, host names), which
# `connectproxy explain` must get through in a fraction of a second: compiled, they took explain
# on the benchmark's large config from 943 to 862 million instructions. The rest of start-up and
# operations code (the section modules read once, the Squid importer, the CLI, workers) gains
# little.
COMPILED = [
    "src/connectproxy/configfile/allow.py",
    "src/connectproxy/configfile/checker.py",
    "src/connectproxy/configfile/errors.py",
    "src/connectproxy/configfile/identities.py",
    "src/connectproxy/configfile/netvalues.py",
    "src/connectproxy/configfile/scalars.py",
    "src/connectproxy/configfile/yamlsubset.py",
    "src/connectproxy/credentials/hashformat.py",
    "src/connectproxy/matching/addresses.py",
    "src/connectproxy/matching/domains.py",
    "src/connectproxy/matching/netset.py",
    "src/connectproxy/net/busypoll.py",
    "src/connectproxy/net/connector.py",
    "src/connectproxy/net/deadlines.py",
    "src/connectproxy/net/dial.py",
    "src/connectproxy/net/sockio.py",
    "src/connectproxy/observe/logs.py",
    "src/connectproxy/observe/metrics.py",
    "src/connectproxy/outcome.py",
    "src/connectproxy/policy/decide.py",
    "src/connectproxy/policy/tlsguard.py",
    "src/connectproxy/server/connection.py",
    "src/connectproxy/server/limits.py",
    "src/connectproxy/server/listening.py",
    "src/connectproxy/server/server.py",
    "src/connectproxy/server/tunnels.py",
    # Not on the connection path, but it walks every open tunnel on the loop that carries them:
    # compiled, its per-tunnel loop costs less of their time (README, "Performance").
    "src/connectproxy/server/tunnelapi.py",
    "src/connectproxy/tunnel/pipes.py",
    "src/connectproxy/tunnel/poller.py",
    "src/connectproxy/tunnel/splice.py",
    "src/connectproxy/wire/hostnames.py",
    "src/connectproxy/wire/http.py",
    "src/connectproxy/wire/responses.py",
    "src/connectproxy/wire/tlshello.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("CONNECTPROXY_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    # The run-time libraries are not installed in the isolated build environment; where their
    # types are missing mypyc treats the values as plain objects, which costs nothing here.
    return list(
        mypycify(
            ["--ignore-missing-imports", *COMPILED],
            opt_level="3",
            group_name="connectproxy._compiled",
        )
    )


setup(ext_modules=ext_modules())
