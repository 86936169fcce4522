"""The `connectproxy` console script and `python -m connectproxy`: `cli.main` in a process that
ends when it returns.

Every command but `run` answers and exits, and none makes cyclic garbage worth collecting; yet
CPython's cyclic collector walks the objects they make again and again while modules import and
a config loads, and once more at exit. So the collector is off from the first import (`run`
switches it back on, `cli.cmd_run`), and what is left at the end is frozen out of the
interpreter's last collections: 6% of `connectproxy explain`'s time on the benchmark's large
config. `cli.main` stays an ordinary function for callers in a longer-lived process.
"""

from __future__ import annotations

import gc


def main() -> int:
    gc.disable()
    from connectproxy.process.cli import main as cli_main

    try:
        return cli_main()
    finally:
        gc.freeze()
