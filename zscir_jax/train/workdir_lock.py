"""One workdir, one job: process 0 of a job holds an exclusive ``flock`` on ``<workdir>/.lock`` while it runs.

The kernel drops the lock when its holder dies, however it dies (SIGKILL included), so a stale lock is taken over
by the next job without any clean-up; the file keeps the holder's pid, host, start time and command for the message
a second job prints. Other processes of the same job do not lock (they share process 0's workdir on purpose).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

from zscir_jax.errors import UserError

LOCK_NAME = ".lock"


class WorkdirLock:
    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._file = None

    def acquire(self) -> "WorkdirLock":
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = _describe(f.read())
            f.close()
            raise UserError(f"workdir {os.path.dirname(self.path)} is in use by {holder}; wait for it, stop it, or "
                            "choose another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "command": " ".join(sys.argv)[:300]}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def refuse_if_held(workdir: str) -> None:
    """Raise the same one-line ``UserError`` at once when another job holds ``workdir``: the main job checks this
    before its slow imports, so a second job ends within seconds (process 0 takes the lock for real later)."""
    if os.path.isfile(os.path.join(workdir, LOCK_NAME)):
        WorkdirLock(workdir).acquire().release()


def _describe(text: str) -> str:
    try:
        d = json.loads(text)
        return f"pid {d['pid']} on {d['host']} since {d['since']} ({d['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
