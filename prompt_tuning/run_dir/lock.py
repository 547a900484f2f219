"""One training run per `MODEL_DIR` at a time: the lock file `MODEL_DIR/run.lock`.

  with run_lock.held(model_dir):   # raises ModelDirLockedError if another run has it
    ...train...

Two runs writing the same MODEL_DIR would interleave checkpoints and exports, so the
second one refuses to start. The lock is an advisory `flock` on `run.lock`, which
the kernel releases when the holder exits in any way (including `kill -9` or a
preempted VM, for NFS after its lease), so a dead run never blocks a restart. The
file records who holds it (`{"pid", "host", "started", "argv"}`) for the error
message; a clean exit empties it. Finding a non-empty file whose lock is free means
the previous run died without cleaning up: its lock is taken over with a warning.

On file systems without `flock` (some FUSE mounts) the record alone decides: a
lock of a dead pid on this host is taken over; one of another host is refused until
its file is older than `stale_after` seconds (delete it if that run is gone).

Only process 0 of a multi-host run takes the lock (the others share its MODEL_DIR).
Remote MODEL_DIRs (`gs://…`) get no lock, with a warning.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import pathlib
import socket
import sys
import time
from typing import Any, Dict, Iterator, Optional

try:
  import fcntl
except ImportError:  # not POSIX: fall back to the record
  fcntl = None

LOCK_FILE = "run.lock"
# Without flock: a record this old (seconds) from another host counts as stale.
DEFAULT_STALE_AFTER = 24 * 3600.0


class ModelDirError(OSError):
  """`MODEL_DIR` cannot be used (not creatable or not writable)."""


class ModelDirLockedError(RuntimeError):
  """Another live run holds `MODEL_DIR/run.lock`.

  Attributes:
    holder: the holder's record (`pid`, `host`, `started`, `argv`), possibly empty.
  """

  def __init__(self, model_dir: str, holder: Dict[str, Any]):
    self.holder = dict(holder)
    who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
           f"started {holder.get('started', '?')}")
    argv = holder.get("argv")
    super().__init__(
        f"MODEL_DIR {model_dir} is in use by another training run ({who}"
        + (f": {argv}" if argv else "") + "). Two runs writing one MODEL_DIR would "
        "corrupt each other's checkpoints. Wait for that run to finish or stop it "
        "(it resumes from its last checkpoint when rerun), or pass a new "
        f"--gin.MODEL_DIR=... to train separately. If that process is really gone, "
        f"delete {pathlib.Path(model_dir) / LOCK_FILE}.")


def _record() -> Dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "argv": " ".join(sys.argv)[:500]}


def parse_record(data: bytes) -> Dict[str, Any]:
  """The holder record in a lock file's bytes; `{}` when empty or unreadable.

  Never raises: a lock file is only ever evidence, whatever it contains.
  """
  try:
    record = json.loads(data.decode("utf-8"))
  except (ValueError, UnicodeDecodeError, RecursionError):
    return {}
  if not isinstance(record, dict):
    return {}
  pid = record.get("pid")
  host = record.get("host")
  return {"pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
          "host": host if isinstance(host, str) else None,
          "started": str(record.get("started", "?"))[:64],
          "argv": str(record.get("argv", ""))[:500]}


def pid_alive(pid: Optional[int]) -> bool:
  """Whether a process `pid` exists on this host (True when it cannot be told)."""
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  except OverflowError:
    return False
  return True


def _stale_without_flock(record: Dict[str, Any], age: float, stale_after: float) -> bool:
  """Decides from the record alone (no flock): may this lock be taken over?"""
  if not record or not record.get("pid"):
    return True
  if record.get("host") == socket.gethostname():
    return record["pid"] == os.getpid() or not pid_alive(record["pid"])
  return age > stale_after


class ModelDirLock:
  """The run lock of one MODEL_DIR (see the module docstring)."""

  def __init__(self, model_dir: str, stale_after: float = DEFAULT_STALE_AFTER):
    self.model_dir = str(model_dir)
    self.path = pathlib.Path(model_dir) / LOCK_FILE
    self.stale_after = stale_after
    self._fd: Optional[int] = None

  def acquire(self) -> "ModelDirLock":
    """Takes the lock, or raises `ModelDirLockedError` / `ModelDirError`."""
    try:
      pathlib.Path(self.model_dir).mkdir(parents=True, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ModelDirError(
          f"Cannot use MODEL_DIR {self.model_dir}: {e.strerror or e} "
          f"({type(e).__name__}). Pass a directory you can write to as "
          "--gin.MODEL_DIR=... (its parent must be a directory, not a file).") from e
    try:
      previous = parse_record(_read_all(fd))
      if not self._lock(fd, previous):
        raise ModelDirLockedError(self.model_dir, previous)
      if previous.get("pid"):
        logging.warning(
            "Taking over the lock of %s from pid %s on host %s (started %s), which "
            "did not exit cleanly (killed or preempted); resuming from its last "
            "complete checkpoint.", self.path, previous.get("pid"),
            previous.get("host"), previous.get("started"))
      _write_all(fd, json.dumps(_record()).encode())
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    return self

  def _lock(self, fd: int, previous: Dict[str, Any]) -> bool:
    if fcntl is not None:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
      except BlockingIOError:
        return False
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
          raise
        logging.warning("%s: flock is not supported here (%s); deciding from the "
                        "record of the previous holder.", self.path, e)
    age = time.time() - os.fstat(fd).st_mtime
    return _stale_without_flock(previous, age, self.stale_after)

  def release(self) -> None:
    """Empties the record and releases the lock (idempotent)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError as e:  # e.g. the disk went away; the flock still goes with fd
      logging.warning("Could not clear %s: %s", self.path, e)
    finally:
      os.close(fd)  # releases the flock

  def __enter__(self) -> "ModelDirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def held(model_dir: str, enabled: bool = True,
         stale_after: float = DEFAULT_STALE_AFTER) -> Iterator[Optional[ModelDirLock]]:
  """Holds MODEL_DIR's run lock for the duration of the block (no-op if disabled)."""
  if not enabled:
    yield None
    return
  if "://" in str(model_dir):  # object stores have no flock and no atomic create
    logging.warning("No run lock for the remote MODEL_DIR %s: make sure only one run "
                    "writes it.", model_dir)
    yield None
    return
  with ModelDirLock(model_dir, stale_after) as lock:
    yield lock


def _read_all(fd: int, limit: int = 1 << 16) -> bytes:
  os.lseek(fd, 0, os.SEEK_SET)
  return os.read(fd, limit)


def _write_all(fd: int, data: bytes) -> None:
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]
  os.fsync(fd)
