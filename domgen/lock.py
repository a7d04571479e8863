"""One owner per run folder: ``running.json`` holds the owner's host, pid and heartbeat.

The same file is a sweep's claim (:mod:`domgen.sweep.status` reads it for ``sweep status``) and the lock
that ``train``/``prune``/``loo`` take on their run folder, so a sweep job and a hand-started command
exclude each other. The rule, in one place:

- Taking it: the claim is written whole to a temp file and ``os.link``-ed to ``running.json``; the link
  fails when the file exists, so of two processes exactly one wins, and a reader never sees half a claim
  (``link`` is atomic on local disks and on NFS).
- A claim is live while its process runs (same host), Slurm says its job is queued or running, or its
  heartbeat (rewritten every ``HEARTBEAT_S``) is younger than ``STALE_S`` (another host).
- A dead owner's claim is taken over under a short ``running.json.takeover`` mutex (created with
  ``O_EXCL``), after checking the claim is still the one found dead; the takeover is appended to
  ``takeovers.jsonl`` in the run folder.
- A sweep launcher writes a *reservation* (``submitted``/``requeued``) for a job it has queued; only a
  sweep job adopts it, anyone else sees the folder as taken.
- The same process may take the lock again (a sweep job, then the training driver it calls); only the
  outermost release removes the file, and only while it is still ours.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from domgen.atomic import file_mode, write_text_atomic
from domgen.errors import RunLocked

LOCK = "running.json"
TAKEOVERS = "takeovers.jsonl"
HEARTBEAT_S = 60.0  # how often an owner refreshes its claim
STALE_S = 15 * 60.0  # a claim with a heartbeat older than this belongs to a dead process
_MUTEX_STALE_S = 60.0  # a takeover mutex older than this was left by a process killed mid-takeover
_HELD: dict[str, int] = {}  # lock paths this process holds -> nesting depth
_HELD_GUARD = threading.Lock()


# ---- claims --------------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # absent, or caught mid-replace on a slow FS
    return value if isinstance(value, dict) else None


def write_claim(run_dir: Path, claim: dict[str, Any]) -> None:
    """Overwrite the claim (a launcher's reservation, an owner's heartbeat); taking a lock is :class:`RunLock`."""
    write_text_atomic(Path(run_dir) / LOCK, json.dumps(claim, indent=2) + "\n")


def clear_claim(run_dir: Path, pid: int | None = None) -> None:
    """Remove the claim; with ``pid``, only when it is still that process's (a requeued twin may own it)."""
    path = Path(run_dir) / LOCK
    claim = read_json(path)
    if claim is not None and (pid is None or claim.get("pid") == pid):
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def claim_alive(claim: dict[str, Any], slurm: dict[str, str] | None = None, now: float | None = None,
                live_states: frozenset[str] | set[str] = frozenset()) -> bool:
    """A claim is live if its process runs (same host), Slurm says the job is queued or running, or its
    heartbeat is fresh. A claim written at submission, before the job started, has no heartbeat.
    ``slurm``: job id -> sacct state (absent: Slurm is not asked); ``live_states``: the states that mean live."""
    state = (slurm or {}).get(str(claim.get("slurm_job_id")))
    if state is not None:  # the scheduler knows best (a requeued job waits with no process at all)
        return state in live_states
    now = time.time() if now is None else now
    if "heartbeat" in claim and now - float(claim["heartbeat"]) > STALE_S:
        return False
    if claim.get("pid") and claim.get("host") == socket.gethostname():
        return pid_alive(int(claim["pid"]))
    return True  # another machine, no scheduler to ask: trust it until its heartbeat goes stale


def is_reservation(claim: dict[str, Any]) -> bool:
    """Written by a sweep launcher for a job it queued (or that Slurm requeued), not by a running process."""
    return "submitted" in claim or "requeued" in claim


def describe(claim: dict[str, Any], now: float | None = None) -> str:
    """'pid 4242 on node7 (heartbeat 12 s ago)', 'Slurm job 77_1 (queued)' ..."""
    now = time.time() if now is None else now
    if claim.get("pid") and claim.get("host") and not is_reservation(claim):
        beat = claim.get("heartbeat") or claim.get("started")
        age = f" (heartbeat {now - float(beat):.0f} s ago)" if beat else ""
        return f"pid {claim['pid']} on {claim['host']}{age}"
    if claim.get("slurm_job_id"):
        return f"Slurm job {claim['slurm_job_id']} ({'requeued' if 'requeued' in claim else 'queued'})"
    if claim.get("launcher") == "local":
        return f"a local sweep (launcher pid {claim.get('pid')} on {claim.get('host')})"
    return "an unknown owner (unreadable claim)"


def me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


# ---- the lock ------------------------------------------------------------------------------------
class RunLock:
    """``with RunLock(run_dir):`` owns ``run_dir`` (created if needed) or raises :class:`RunLocked`.

    ``wait``: poll every ``poll_s`` until the owner is gone instead of raising (``on_wait`` is called once
    with the owner's claim). ``adopt_reservation``: a sweep job takes over its launcher's reservation.
    ``on_takeover``: called with the dead owner's claim when it is taken over."""

    def __init__(self, run_dir: Path, claim: dict[str, Any] | None = None, wait: bool = False, poll_s: float = 2.0,
                 adopt_reservation: bool = False, on_wait: Callable[[dict], None] | None = None,
                 on_takeover: Callable[[dict], None] | None = None, heartbeat_s: float = HEARTBEAT_S):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.claim = dict(claim or me()) | {"token": uuid.uuid4().hex}
        self.wait, self.poll_s, self.adopt = wait, poll_s, adopt_reservation
        self.on_wait, self.on_takeover, self.heartbeat_s = on_wait, on_takeover, heartbeat_s
        self._key = os.path.abspath(self.path)
        self._nested = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        with _HELD_GUARD:
            if self._key in _HELD:  # this process owns it already (a sweep job, then its driver)
                _HELD[self._key] += 1
                self._nested = True
                return
        told = False
        while (owner := self._try()) is not None:
            if not self.wait:
                raise RunLocked(f"{self.run_dir} is in use by {describe(owner)}; wait for it with --wait, "
                                "or stop that process first", self.run_dir, retry_flag="--wait")
            if not told and self.on_wait is not None:
                self.on_wait(owner)
                told = True
            time.sleep(self.poll_s)
        with _HELD_GUARD:
            _HELD[self._key] = 1
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {self.run_dir.name}")
        self._thread.start()

    def _try(self) -> dict[str, Any] | None:
        """Take the lock (None) or return the live owner's claim."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            self.claim["heartbeat"] = time.time()
            if self._create():
                return None
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                continue  # released between our link and our read: try again
            current = _parse(raw)
            if current is not None and self.adopt and is_reservation(current):
                self._rewrite()
                return None
            if current is not None and claim_alive(current):
                return current
            if self._take_over(raw, current or {}):
                return None
            time.sleep(0.05)
        return read_json(self.path) or {}

    def _create(self) -> bool:
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=f".{LOCK}.", suffix=".new")
        try:
            os.fchmod(fd, file_mode())
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.claim, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)  # fails if the lock exists: the atomic test-and-set
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _take_over(self, raw: bytes, dead: dict[str, Any]) -> bool:
        mutex = self.path.with_name(LOCK + ".takeover")
        try:
            os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - mutex.stat().st_mtime > _MUTEX_STALE_S:
                    mutex.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        try:
            try:
                if self.path.read_bytes() != raw:
                    return False  # someone else took over (or the owner released) since we looked
            except FileNotFoundError:
                return False
            self.claim["took_over"] = {k: dead.get(k) for k in ("host", "pid", "heartbeat", "slurm_job_id") if k in dead}
            self._rewrite()
            record = {"time": time.time(), "by": {k: self.claim[k] for k in ("host", "pid")}, "dead_owner": dead}
            with open(self.run_dir / TAKEOVERS, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        finally:
            mutex.unlink(missing_ok=True)
        if self.on_takeover is not None:
            self.on_takeover(dead)
        return True

    def _rewrite(self) -> None:
        self.claim["heartbeat"] = time.time()
        write_claim(self.run_dir, self.claim)

    def _ours(self) -> bool:
        return (read_json(self.path) or {}).get("token") == self.claim["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self._ours():  # never overwrite whoever took over a lock we were thought dead for
                self._rewrite()

    def release(self, leave: dict[str, Any] | None = None) -> None:
        """Remove the claim (outermost release only, and only while it is ours); ``leave``: write this
        claim instead (a Slurm job that is being requeued leaves a reservation for its next start)."""
        with _HELD_GUARD:
            if self._nested:
                _HELD[self._key] -= 1
                return
            _HELD.pop(self._key, None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._ours():
            return
        if leave is not None:
            write_claim(self.run_dir, leave)
            return
        self.path.unlink(missing_ok=True)
        try:
            self.run_dir.rmdir()  # a folder that held only the lock (the run failed before writing anything)
        except OSError:
            pass


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
