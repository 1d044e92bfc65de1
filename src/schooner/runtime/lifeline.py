"""Tie a child process's life to its parent's, also when the parent is SIGKILLed.

The parent creates a pipe, keeps the write end and passes the read end to
every child it starts. The write end is never written: when the parent dies,
for whatever reason, the kernel closes it and the children's blocking read
returns end-of-file. The child then shuts down, and exits hard if a graceful
shutdown does not finish in time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

#: How long a child may spend shutting down gracefully after its parent died.
_HARD_EXIT_AFTER_S = 1.0


class Lifeline:
    """The parent's side: a pipe whose read end children inherit."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_inheritable(self.read_fd, True)

    def close_read_end(self) -> None:
        """Close this process's copy of the read end (after the children got theirs)."""
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def close(self) -> None:
        """Close both ends; children see end-of-file and shut down."""
        self.close_read_end()
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1


def watch_parent(read_fd: int, on_parent_death: Callable[[], object]) -> None:
    """In a child: call ``on_parent_death`` (from a thread) once the parent is gone.

    ``on_parent_death`` should start a graceful shutdown; if the process is
    still alive ``_HARD_EXIT_AFTER_S`` later it exits with status 1.
    """

    def watch() -> None:
        try:
            while os.read(read_fd, 1):
                pass
        except OSError:
            pass
        timer = threading.Timer(_HARD_EXIT_AFTER_S, os._exit, args=(1,))
        timer.daemon = True
        timer.start()
        try:
            on_parent_death()
        except BaseException:
            os._exit(1)

    threading.Thread(target=watch, name="schooner-lifeline", daemon=True).start()
