"""The session directory: where an instance keeps its sockets, address file and logs.

Layout (created mode 0700, readable by the owning user alone)::

    $TMPDIR/schooner/session_<time>_<pid>/
        sockets/        Unix sockets of the controller and every replica
        logs/           one log file per process
        address         how to reach the instance's controller
    $TMPDIR/schooner/session_latest -> session_<...>
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: sockaddr_un allows 108 bytes; keep room for the longest socket file name.
_MAX_SOCKET_DIR_LEN = 80


@dataclass(frozen=True)
class Session:
    """Paths of one instance's session directory."""

    root: Path
    sockets: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def controller_socket(self) -> str:
        return str(self.sockets / "controller.sock")

    def replica_socket(self, replica_id: str) -> str:
        return str(self.sockets / f"r_{replica_id}.sock")

    @classmethod
    def create(cls, base: Path | None = None) -> Session:
        base = base or Path(tempfile.gettempdir()) / "schooner"
        base.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        root = base / f"session_{stamp}_{os.getpid()}"
        suffix = 0
        while True:
            candidate = root if not suffix else root.with_name(f"{root.name}_{suffix}")
            try:
                candidate.mkdir(mode=0o700)
                root = candidate
                break
            except FileExistsError:
                suffix += 1
        (root / "logs").mkdir(mode=0o700)
        sockets = root / "sockets"
        if len(str(sockets)) > _MAX_SOCKET_DIR_LEN:
            # Long $TMPDIR: Unix socket paths would not fit; keep them in a short private dir.
            sockets = Path(tempfile.mkdtemp(prefix="schooner-", dir="/tmp"))
            (root / "sockets").symlink_to(sockets)
        else:
            sockets.mkdir(mode=0o700)
        latest = base / "session_latest"
        tmp_link = base / f".session_latest.{os.getpid()}"
        try:
            if tmp_link.is_symlink():
                tmp_link.unlink()
            tmp_link.symlink_to(root.name)
            os.replace(tmp_link, latest)
        except OSError:
            pass  # another instance raced us; session_latest is best effort
        return cls(root=root, sockets=sockets)

    @classmethod
    def open(cls, root: Path) -> Session:
        sockets = root / "sockets"
        return cls(root=root, sockets=sockets.resolve() if sockets.is_symlink() else sockets)

    def remove_sockets(self) -> None:
        """Delete socket files (called by the head on shutdown)."""
        if not self.sockets.exists():
            return
        for path in self.sockets.glob("*.sock"):
            path.unlink(missing_ok=True)
        if (self.root / "sockets").is_symlink():
            try:
                self.sockets.rmdir()
            except OSError:
                pass
