"""One trainer per run folder: ``train.lock`` says who trains there, and a heartbeat says it still does.

Two trainers on one folder delete each other's checkpoints and log every step twice. An OS lock
(``flock``) cannot stop that on Google Drive: two Colab sessions are two machines, and a runtime
that disconnects leaves nothing behind to unlock. So the lock is a small JSON file naming the
holder (host, pid, a session id, the stage, since when) whose ``heartbeat`` a thread rewrites
every :data:`HEARTBEAT_S`. Another trainer that finds it:

- refuses to start, naming the holder, while the holder is alive: on this machine its pid
  exists, on another its heartbeat is younger than :data:`STALE_S`;
- takes it over, with a warning, when it is stale: the pid is gone (a restarted kernel), or the
  heartbeat is older than :data:`STALE_S` (a disconnected runtime; Drive syncs within seconds to
  a minute, so ten minutes leaves room), or the file is unreadable and as old;
- takes it over while fresh only when asked (``take_over=True``: ``clara-lite train --take-over``, a
  notebook's ``TAKE_OVER = True``), and never from a process that is alive on this machine: a runtime
  that reconnects after a disconnect finds its old runtime's heartbeat, and only the user knows that
  runtime is gone. Every take-over is kept in :attr:`RunLock.taken_over` (run.json records it).

Two sessions taking over the same stale lock in the same instant, on two machines, is not
caught: Drive has no atomic create. Each re-reads the lock after writing it, which narrows it to
Drive's sync delay; the heartbeat thread reports a lock taken over while it is held.

The index writers (``clara-lite index build|add|remove|merge``) hold the same kind of lock,
``index.lock`` in the index folder (:mod:`clara_lite.serve.index_folder`), with their own wording.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..core.errors import ClaraError
from ..core.layout import write_json

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0
STALE_S = 600.0
TRAINERS_HARM = "two trainers on one run folder overwrite each other's checkpoints"


class RunLocked(ClaraError, OSError):
    """Another trainer holds the run folder; the message names it and what to do (the CLI's terms).

    The facts are attributes too, so a notebook can say the same in its own terms: ``holder`` (the lock
    file's JSON, None when unreadable), ``path``, ``same_host``, ``alive_here`` (its process runs on this
    machine: no take-over), ``heartbeat_age`` and ``stale_in`` (seconds)."""
    code = "run_locked"
    exit_status = 5

    def __init__(self, message: str, *, holder: dict | None = None, path: Path | None = None,
                 same_host: bool = False, alive_here: bool = False, heartbeat_age: float = 0.0,
                 stale_in: float = 0.0):
        super().__init__(message)
        self.holder, self.path, self.same_host, self.alive_here = holder, path, same_host, alive_here
        self.heartbeat_age, self.stale_in = heartbeat_age, stale_in


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class RunLock:
    """The lock of one run folder, held by this process (see the module doc)."""

    def __init__(self, path: str | Path, *, stage: str = "", heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S, take_over: bool = False, writer: str = "trainer",
                 harm: str = TRAINERS_HARM, instead: str = "train in another --run-dir", doing: str = "training"):
        self.path, self.heartbeat_s, self.stale_s, self.take_over = Path(path), heartbeat_s, stale_s, take_over
        self.taken_over: dict | None = None  # whose lock this one replaced, when and why (for run.json)
        # what the messages call the holder, what two of them would do, what else the user can do
        self.writer, self.harm, self.instead, self.doing = writer, harm, instead, doing
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "session": uuid.uuid4().hex, "stage": stage,
                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_dir = False

    # ----------------------------------------------------------- who holds it

    def stale_reason(self, holder: dict | None, now: float | None = None) -> str | None:
        """Why ``holder``'s lock may be taken over, or None while it is alive."""
        now = time.time() if now is None else now
        if holder is None:
            age = now - self.path.stat().st_mtime if self.path.exists() else self.stale_s
            return f"the lock file is unreadable and {_age(age)} old" if age >= min(self.stale_s, 30) else None
        beat = holder.get("heartbeat")
        age = now - beat if isinstance(beat, (int, float)) else float("inf")
        if holder.get("host") == self.me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            return f"its process {holder['pid']} on this machine is gone"
        if age >= self.stale_s:
            return f"its last heartbeat is {_age(age)} old (a disconnected runtime)"
        return None

    def _alive_here(self, holder: dict | None) -> bool:
        """The holder's process runs on this machine: provably alive, never taken over."""
        return (holder is not None and holder.get("host") == self.me["host"] and isinstance(holder.get("pid"), int)
                and _alive(holder["pid"]))

    def _refused(self, holder: dict | None, now: float) -> RunLocked:
        if holder is None:
            return RunLocked(f"{self.path.parent} is being set up by another {self.writer} ({self.path} is being "
                             "written): wait a moment and run the command again", path=self.path)
        beat = holder.get("heartbeat")
        age = now - beat if isinstance(beat, (int, float)) else 0.0
        same = holder.get("host") == self.me["host"]
        stale_in = max(self.stale_s - age, 0.0)
        who = (f"process {holder.get('pid')} on this machine" if same else
               f"process {holder.get('pid')} on host {holder.get('host')!r} (another session)")
        what = f" {self.doing} {holder['stage']}" if holder.get("stage") else ""
        if self.writer == "trainer":  # a trainer's lock can be taken over (--take-over, TAKE_OVER = True)
            hint = (f"Wait for it to finish or stop it (kill {holder.get('pid')}); --take-over cannot take a lock "
                    "from a process alive on this machine" if same else
                    f"Wait for it to finish or stop that session. If its runtime is gone (a Colab disconnect), run "
                    f"again with --take-over (recorded in run.json); without it the lock counts as stale "
                    f"{_age(self.stale_s)} after its last heartbeat, in {_age(stale_in)}")
        else:
            hint = (f"Wait for it to finish or stop it (kill {holder.get('pid')})" if same else
                    f"Wait for it to finish or stop that session. If its runtime is gone (a Colab disconnect), the "
                    f"lock counts as stale {_age(self.stale_s)} after its last heartbeat, in {_age(stale_in)}; "
                    f"delete {self.path} to take over sooner if you are sure")
        message = (f"{self.path.parent} is in use by {who}{what} since {holder.get('since')} (last heartbeat "
                   f"{_age(age)} ago): {self.harm}. {hint}, or {self.instead}.")
        return RunLocked(message, holder=holder, path=self.path, same_host=same, alive_here=self._alive_here(holder),
                         heartbeat_age=age, stale_in=stale_in)

    # ----------------------------------------------------------- acquire / keep / release

    def _write(self) -> None:
        write_json(self.path, {**self.me, "heartbeat": time.time()}, indent=1)

    def acquire(self) -> RunLock:
        self._made_dir = not self.path.parent.exists()  # removed again if the run leaves it empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        except FileExistsError:
            holder, now = _read(self.path), time.time()
            if holder is not None and holder.get("session") == self.me["session"]:
                return self
            reason = self.stale_reason(holder, now)
            if reason is None:
                if not self.take_over or holder is None or self._alive_here(holder):
                    raise self._refused(holder, now) from None
                reason = "asked to take over (its heartbeat was fresh; its runtime is gone, the user says)"
            log.warning("Taking over %s from %s (process %s): %s", self.path,
                        (holder or {}).get("host", "?"), (holder or {}).get("pid", "?"), reason)
            self.taken_over = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": {k: v for k, v in self.me.items() if k != "session"}, "reason": reason,
                               "from": {k: v for k, v in (holder or {}).items() if k != "session"}}
        try:
            self._write()
        except OSError as err:
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise OSError(err.errno, f"could not write {self.path} ({err.strerror or err}): free space (on Colab: "
                          "empty Drive's bin), then run the same command again") from None
        if (_read(self.path) or {}).get("session") != self.me["session"]:  # another taker won the race
            raise self._refused(_read(self.path), time.time())
        self._thread = threading.Thread(target=self._beat, name="clara-lite-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = _read(self.path)
            if holder is not None and holder.get("session") != self.me["session"]:
                log.error("%s was taken over by process %s on %s: another %s now writes in %s; stop one of "
                          "them", self.path, holder.get("pid"), holder.get("host"), self.writer, self.path.parent)
                return
            try:
                self._write()
            except OSError as err:  # a full Drive: the lock looks stale sooner, training goes on
                log.warning("Could not refresh %s: %s", self.path, err)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = _read(self.path)
        if holder is not None and holder.get("session") == self.me["session"]:
            with contextlib.suppress(OSError):
                self.path.unlink()
                if self._made_dir:  # options refused before anything was written: leave no folder
                    self.path.parent.rmdir()


@contextlib.contextmanager
def hold(path: str | Path, *, stage: str = "", enabled: bool = True, **kwargs):
    """Hold the run folder's lock for the block (``enabled=False``: a DDP worker, whose main process holds it)."""
    if not enabled:
        yield None
        return
    lock = RunLock(path, stage=stage, **kwargs).acquire()
    try:
        yield lock
    finally:
        lock.release()
