"""The `connectproxy` console script and `python -m connectproxy`: `cli.main` in a process that
ends when it returns.

Every command but `run` answers and exits, and none makes cyclic garbage worth collecting; yet
CPython's cyclic collector walks the objects they make again and again while modules import and
a config loads, and once more at exit. So the collector is off from the first import (`run`
switches it back on, `cli.cmd_run`), and what is left at the end is frozen out of the
interpreter's last collections: 6% of `connectproxy explain`'s time on the benchmark's large
config. `cli.main` stays an ordinary function for callers in a longer-lived process.

`explain` and `check-config` go further: the config they load, and the YAML it was read from,
are kept until the end (`load.keep_until_exit`), and once the answer is flushed the process ends
with os._exit, freeing nothing one object at a time, neither those nor the interpreter's
modules: 4% of explain's instructions on the large config. Neither command leaves anything
else to finish (no threads, atexit handlers or files of its own). Should the flush fail (the
reader of a pipe gone), the process ends the ordinary way, which reports it as it always did.
"""

from __future__ import annotations

import gc
import os
import sys

# The commands that load a config, print what it says and end.
_ANSWER_AND_EXIT = ("explain", "check-config")


def main() -> int:
    gc.disable()
    from connectproxy.configfile import load
    from connectproxy.process.cli import main as cli_main

    exit_early = len(sys.argv) > 1 and sys.argv[1] in _ANSWER_AND_EXIT
    if exit_early:
        load.keep_until_exit = []
    try:
        status = cli_main()
    finally:
        gc.freeze()
    if exit_early and _flushed():
        os._exit(status)
    return status


def _flushed() -> bool:
    """Whether everything printed is written out."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True
