"""The tunnels' epoll set: one for every tunnel socket, itself watched by the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable


class Poller:
    """One epoll set for every tunnel socket, itself watched by the event loop.

    Why not `loop.add_reader` per socket: when the kernel reports an error on a socket (a peer's
    reset right after its last bytes), libuv closes the watcher without calling the callback, so
    the tunnel would never learn of the reset and would sit until the idle timeout. Here
    EPOLLERR/EPOLLHUP are delivered to both callbacks, whose next read or write sees the error.
    It also costs one epoll_ctl per change instead of a watcher created and destroyed each time.
    The interface is the loop's: add_reader/remove_reader/add_writer/remove_writer, plus `forget`,
    which whoever closes a descriptor must call first (the Tunnel does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._loop = loop
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def _mask(self, fd: int) -> int:
        """What the kernel's set holds for `fd`: the callbacks are the record of it, so each
        change is one epoll_ctl that does not fail (trying MOD first on a new descriptor cost a
        failed system call and an exception per socket)."""
        return (select.EPOLLIN if fd in self._readers else 0) | (
            select.EPOLLOUT if fd in self._writers else 0
        )

    def _update(self, fd: int, had: int) -> None:
        mask = self._mask(fd)
        if mask == had:
            return
        try:
            if not mask:
                self._epoll.unregister(fd)
            elif not had:
                self._epoll.register(fd, mask)
            else:
                self._epoll.modify(fd, mask)
        except OSError:
            # The kernel's set disagrees with the record (the descriptor was closed, or closed
            # and its number reused): start this number over.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            if mask:
                with contextlib.suppress(OSError):
                    self._epoll.register(fd, mask)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        had = self._mask(fd)
        self._readers[fd] = callback
        self._update(fd, had)

    def remove_reader(self, fd: int) -> None:
        had = self._mask(fd)
        if self._readers.pop(fd, None) is not None:
            self._update(fd, had)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        had = self._mask(fd)
        self._writers[fd] = callback
        self._update(fd, had)

    def remove_writer(self, fd: int) -> None:
        had = self._mask(fd)
        if self._writers.pop(fd, None) is not None:
            self._update(fd, had)

    def readable(self, fd: int) -> asyncio.Future[None]:
        """A future done when `fd` is readable (or has an error): for a step that reads before
        the tunnel starts, the TLS guard's ClientHello (server/connection.py). `fd` stays
        registered afterwards, so the tunnel's own reader then takes the place of this one
        without an epoll_ctl; `loop.add_reader` instead cost a libuv watcher made and destroyed
        and two epoll_ctl per tunnel. Whoever closes `fd` without starting a tunnel must
        `forget` it first, as for every descriptor here."""
        fut: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self.add_reader(fd, ready)
        return fut

    def forget(self, fd: int) -> None:
        """Right before `fd` is closed: drop its callbacks, so none outlives the descriptor and
        misleads the next socket that gets the same number. The kernel takes a closed socket out
        of the epoll set by itself (tunnel sockets are never duplicated, so the close is the
        last reference), which saves an epoll_ctl per socket."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)

    def _dispatch(self) -> None:
        errors = select.EPOLLERR | select.EPOLLHUP
        for fd, events in self._epoll.poll(0, 1024):
            # Look callbacks up per event: an earlier callback may have closed this descriptor.
            if events & (select.EPOLLIN | errors):
                reader = self._readers.get(fd)
                if reader is not None:
                    reader()
            if events & (select.EPOLLOUT | errors):
                writer = self._writers.get(fd)
                if writer is not None:
                    writer()

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
