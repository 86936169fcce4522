"""Pipes for splice(2), lent to a tunnel direction only while a chunk is in flight."""

from __future__ import annotations

import fcntl
import os

PIPE_SIZE = 1 << 20  # splice mode: bytes per read into a pipe (Linux's default pipe-max-size)


class PipePool:
    """Pipes lent to a tunnel direction while a chunk is in flight, then taken back.

    A pipe is only returned empty, so any tunnel can reuse it. The pool keeps a few spares so a
    busy proxy does not create and close a pipe per chunk."""

    def __init__(self, keep: int = 64) -> None:
        self._free: list[tuple[int, int, int]] = []
        self._keep = keep

    def take(self) -> tuple[int, int, int]:
        """A pipe (read end, write end, capacity)."""
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)  # a smaller pipe: more system calls per MB
        return r, w, size

    def give(self, pipe: tuple[int, int, int]) -> None:
        if len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for r, w, _ in self._free:
            os.close(r)
            os.close(w)
        self._free.clear()
