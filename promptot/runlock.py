"""One writer per run directory: a lock file holding the owner's pid, host and start time.

``train.py`` takes the lock of ``OUTPUT_DIR`` before writing anything and releases it at exit. A second run on the
same directory (another ``train.py``, a sweep worker) is refused with a message naming the owner. A lock left by a
process that died (killed, crashed) on this host is detected from its pid and taken over; a lock from another host
cannot be checked and is refused, with the command that removes it.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import socket
import sys
import time
from typing import Dict, Optional

from .errors import UserError
from .fileio import atomic_write_text

__all__ = ["LOCK_FILE", "RunLockedError", "RunLock", "pid_alive"]

LOCK_FILE = ".promptot.lock"


class RunLockedError(UserError):
    """Another live process holds the run directory's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 probes without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """The lock of one run directory (``<directory>/.promptot.lock``); use as a context manager or call
    :meth:`acquire` / :meth:`release`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = osp.join(directory, LOCK_FILE)
        self.owned = False

    def _record(self) -> Dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "argv": sys.argv}

    def _read(self) -> Optional[Dict]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`RunLockedError` naming its live owner. Creating the directory or the lock
        file can fail (read-only place): that raises a :class:`UserError` naming the directory."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_or_refuse()
            return self
        except OSError as e:
            raise UserError(f"Cannot write to the output directory {self.directory} ({e.strerror or e}); choose a "
                            "writable --output-dir.") from e
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
        self.owned = True
        return self

    def _take_over_or_refuse(self) -> None:
        owner = self._read()
        if owner is None:  # half-written lock: its writer died between create and write
            owner = {"pid": -1, "host": socket.gethostname()}
        same_host = owner.get("host") == socket.gethostname()
        pid = int(owner.get("pid", -1))
        if pid == os.getpid() and same_host:
            self.owned = True
            return
        if same_host and not pid_alive(pid):
            print(f"Note: taking over the lock of {self.directory} left by process {pid}, which is no longer running "
                  f"(started {owner.get('started', '?')}).")
            atomic_write_text(self.path, json.dumps(self._record()))
            # Two processes may take over the same stale lock at once: the last writer wins, the other refuses.
            if int((self._read() or {}).get("pid", -1)) != os.getpid():
                return self._take_over_or_refuse()
            self.owned = True
            return
        where = "this host" if same_host else f"host {owner.get('host')}"
        raise RunLockedError(
            f"{self.directory} is in use by another run (pid {pid} on {where}, started {owner.get('started', '?')}): "
            f"one writer per run directory. Wait for it to finish, or use another --output-dir. If that process is "
            f"gone, remove {self.path}.")

    def release(self) -> None:
        if not self.owned:
            return
        owner = self._read()
        if owner is not None and int(owner.get("pid", -1)) == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.owned = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
