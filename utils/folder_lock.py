"""A lock file that keeps one process per folder: a grid cell (reproduction/lock.py), a training run folder.

The lock file names its holder (host, process id, batch job id, start time) and is created whole or not at all
(written under a temporary name, then hard-linked to the lock name, which fails when the name exists, also on
NFS). While the holder works, a thread touches the file every HEARTBEAT_SECONDS (by time, never per iteration),
so that any machine sharing the file system can tell a live holder from a dead one. A holder is stale when

* its file has had no heartbeat for STALE_AFTER_SECONDS, whichever host it ran on;
* it is this batch job: a previous attempt of the job, requeued after preemption or a timeout;
* it ran on this host and its process no longer exists;
* it is a SLURM job that `squeue` no longer lists.

A stale lock is taken over (`took_over` says why); a live one raises the error the subclass names (`busy`). The
lock is removed on release, also after an error, Ctrl-C or a requeue; only a SIGKILL (or a lost node) leaves a
stale one behind.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0  # 20 missed heartbeats: generous for a slow shared file system and clock skew


def this_host() -> str:
    return socket.gethostname()


def current_job_id() -> str:
    """The batch job this process runs in ('' outside one): SLURM's id (array jobs: <array id>_<task id>) or, under
    submitit's local executor, the id of the local job controller."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local:{this_host()}:{env['SUBMITIT_LOCAL_JOB_ID']}"
    return ""


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def slurm_job_active(job_id: str) -> bool | None:
    """Whether SLURM still lists the job (pending, running, requeued, ...); None when squeue cannot tell."""
    squeue = shutil.which("squeue")
    if not squeue:
        return None
    try:
        done = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return False if "invalid job id" in done.stderr.lower() else None
    return bool(done.stdout.strip())


def short_job_id(job_id: str) -> str:
    """'slurm:123_4' -> '123_4'; 'local:host:4242' -> 'local 4242' (submitit's local executor)."""
    kind, _, rest = job_id.partition(":")
    return rest if kind == "slurm" else f"{kind} {rest.rpartition(':')[2]}" if rest else job_id


def job_active(job_id: str) -> bool | None:
    """Whether the batch job `job_id` (as current_job_id writes it) still exists; None when that cannot be told."""
    kind, _, rest = job_id.partition(":")
    if kind == "slurm":
        return slurm_job_active(rest)
    if kind == "local":
        host, _, pid = rest.rpartition(":")
        return process_exists(int(pid)) if host == this_host() and pid.isdigit() else None
    return None


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    job_id: str
    token: str
    started: float  # time.time() when the lock was taken
    heartbeat: float  # the lock file's modification time

    def describe(self) -> str:
        job = f", job {short_job_id(self.job_id)}" if self.job_id else ""
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        return f"process {self.pid} on {self.host}{job} (since {since})"

    def stale_reason(self, now: float | None = None) -> str:
        """Why the holder is gone ('' when it may be alive)."""
        now = time.time() if now is None else now
        if now - self.heartbeat > STALE_AFTER_SECONDS:
            return f"no heartbeat for {(now - self.heartbeat) / 60:.0f} min"
        if self.job_id and self.job_id == current_job_id():
            return "an earlier attempt of this job (requeued)"
        if self.host == this_host() and not process_exists(self.pid):
            return f"process {self.pid} no longer runs on {self.host}"
        if self.job_id and job_active(self.job_id) is False:
            return f"job {short_job_id(self.job_id)} has ended"
        return ""


def read_holder(path: Path) -> LockHolder | None:
    """The holder named by the lock file `path`, or None when there is no lock."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        heartbeat = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable: treat it as a dead holder, it is taken over after the grace time
        record, heartbeat = {}, 0.0
    return LockHolder(str(record.get("host", "?")), int(record.get("pid", 0)), str(record.get("job_id", "")),
                      str(record.get("token", "")), float(record.get("started", 0.0)), heartbeat)


class FolderLock:
    """`with Lock(folder):` holds `folder/<file_name>` with a heartbeat; a live holder makes acquire() raise
    busy(holder). Subclasses name the file and the error."""

    file_name = "folder.lock"

    def __init__(self, run_dir: str | Path, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.file_name
        self.heartbeat_seconds = heartbeat_seconds
        self.token = uuid.uuid4().hex
        self.took_over = ""  # why a stale lock was taken over ('' when there was none)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def busy(self, holder: LockHolder) -> Exception:
        return RuntimeError(f"{self.run_dir} is held by {holder.describe()}")

    def holder(self) -> LockHolder | None:
        return read_holder(self.path)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder = self.holder()
            reason = holder.stale_reason() if holder else "removed meanwhile"
            if holder is not None and not reason:
                raise self.busy(holder)
            if holder is not None and not self._remove_stale(holder):
                raise self.busy(self.holder() or holder)
            if not self._create():  # another launch took it over at the same moment
                raise self.busy(self.holder() or holder)
            self.took_over = reason
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.run_dir.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self.holder()
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        record = {"host": this_host(), "pid": os.getpid(), "job_id": current_job_id(), "token": self.token,
                  "started": time.time()}
        # not named like the temporary files a resuming trainer clears away (".*.tmp")
        temporary = self.run_dir / f".{self.file_name}.{self.token}.new"
        temporary.write_text(json.dumps(record) + "\n")
        try:
            os.link(temporary, self.path)  # atomic: fails when a lock exists
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def _remove_stale(self, holder: LockHolder) -> bool:
        """Move the stale lock aside; False when what was moved turned out to be another taker's fresh lock."""
        aside = self.run_dir / f".{self.file_name}.{self.token}.stale"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return True  # gone already
        try:
            moved = json.loads(aside.read_text()).get("token", "")
        except (OSError, ValueError):
            moved = ""
        if moved and moved != holder.token:  # someone took it over between our read and our move: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the next beat tries again; a lock that stays untouched is taken over after the grace time
