"""Runs untrusted Python (model-generated code) so that it can only fail itself.

`run_program(source, limits)` runs `source` in a fresh interpreter started from
`tasks/sandbox_child.py` and returns a `Result`; it never raises for anything the
program does (infinite loops, fork bombs, huge allocations, `os.system("rm -rf /")`,
`sys.exit`, segfaults), only when the isolation itself cannot be set up
(`SandboxUnavailableError`, before any untrusted code runs).

What the isolation guarantees (Linux only; docs/TASKS_DECODER.md has the same list):
  * network: the program runs in its own network namespace, which has no interface
    but a loopback that is down, so no socket can reach anything (kernel-enforced;
    no Python patching is relied on);
  * files: every mount is read-only for it except fresh private tmpfs mounts over
    /tmp, /var/tmp and /dev/shm (size-limited, in memory, discarded afterwards);
    its cwd and HOME is the empty /tmp/work, so nothing it writes reaches a disk. It can
    *read* whatever its user may read: when the harness runs as root the program
    runs as `nobody`; otherwise it runs as the caller's uid with no capabilities in
    a user namespace, and can read the caller's readable files (not secrets-safe);
  * processes: its own PID namespace with a fresh /proc, so it cannot see or signal
    the harness or read its environment; when its first process ends or is killed
    the kernel kills every process it started. RLIMIT_NPROC bounds fork bombs;
  * resources: wall-clock timeout (then SIGKILL), RLIMIT_CPU, RLIMIT_AS (memory),
    RLIMIT_FSIZE (file and output size), no core dumps, 64 open files;
  * environment: only `Limits.env` (PATH, HOME, LANG); nothing of the harness's.
Not guaranteed: protection against kernel exploits, side channels, or a program
that fakes its own success by reading the runner's memory (the pass marker is a
random nonce the program is not told; reading it from the interpreter's frames is
possible). Use a VM or gVisor for code from an adversary; this is for checking
model outputs.
"""
import dataclasses
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
PROGRAM = "program.py"
OUTPUT_LIMIT = 64 * 1024  # Characters of stdout/stderr kept in a Result.


class SandboxUnavailableError(RuntimeError):
  """The namespaces/limits could not be set up; no untrusted code was run."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one program may use.

  Attributes:
    timeout_seconds: wall-clock time before the whole process tree is killed.
    memory_bytes: address space per process (RLIMIT_AS).
    file_bytes: largest file (and stdout/stderr) it may write (RLIMIT_FSIZE).
    tmpfs_bytes: size of each private tmpfs (/tmp, /var/tmp, /dev/shm).
    max_processes: RLIMIT_NPROC of the sandbox user (counts all of its processes).
    env: the program's entire environment.
  """
  timeout_seconds: float = 10.0
  memory_bytes: int = 1 << 30
  file_bytes: int = 1 << 20
  tmpfs_bytes: int = 16 << 20
  max_processes: int = 16
  env: Dict[str, str] = dataclasses.field(default_factory=lambda: {
      "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp/work",
      "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"})


@dataclasses.dataclass(frozen=True)
class Result:
  """Outcome of one program.

  status: "passed" (ran to the end), "failed" (raised, e.g. a failing assert),
  "exited" (sys.exit / os._exit before the end: never a pass), "timeout",
  "killed" (a signal: segfault, memory or CPU or file-size limit).
  """
  status: str
  stdout: str
  stderr: str
  seconds: float

  @property
  def passed(self) -> bool:
    return self.status == "passed"


def _sandbox_ids(user_namespace: bool):
  if user_namespace:
    return os.getuid(), os.getgid()
  entry = pwd.getpwnam("nobody")
  return entry.pw_uid, entry.pw_gid


def _remove_tree(path: str) -> None:
  """Deletes a finished example's directory (its processes are all gone by now).

  Directories the program made unreadable are opened up for the owner first;
  symlinks are never followed (a link to /etc stays a link).
  """
  def retry(function, name, _):
    for target in (os.path.dirname(name), name):
      if os.path.lexists(target) and not os.path.islink(target):
        try:
          os.chmod(target, stat.S_IRWXU)
        except OSError:
          pass
    function(name)
  shutil.rmtree(path, onerror=retry)


def _kill_tree(process: subprocess.Popen) -> None:
  """Kills the program's PID namespace, then waits for the runner.

  SIGKILL to the namespace's init (the runner's child) makes the kernel kill every
  process in the namespace; the runner's waitpid returns once all are gone, so when
  this returns nothing the program started is left. Signals to the runner's
  process group follow only if the runner does not exit by itself.
  """
  try:
    with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
      children = [int(p) for p in f.read().split()]
  except OSError:
    children = []
  for pid in children:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  try:
    process.wait(timeout=10)
  except subprocess.TimeoutExpired:
    try:
      os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    process.wait()


def _read(path: str, nonce: str):
  """(text of the first OUTPUT_LIMIT bytes, whether the file ends with the marker)."""
  marker = f"\n{nonce}\n".encode()
  with open(path, "rb") as f:
    head = f.read(OUTPUT_LIMIT)
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - len(marker)))
    finished = f.read() == marker
  if finished and size <= OUTPUT_LIMIT:
    head = head[:-len(marker)]
  return head.decode("utf-8", "replace"), finished


def run_program(source: str, limits: Limits = Limits(),
                user_namespace: Optional[bool] = None) -> Result:
  """Runs `source` isolated (see the module docstring); returns its Result.

  Args:
    source: the whole program (e.g. a solution followed by its test asserts).
    limits: time, memory, file, process limits and the environment.
    user_namespace: isolate in a user namespace as the caller's uid without
      capabilities (default: only when not root; root runs the program as `nobody`).

  Raises:
    SandboxUnavailableError: not Linux, or the namespaces could not be created.
  """
  if not sys.platform.startswith("linux"):
    raise SandboxUnavailableError(
        f"The code sandbox needs Linux namespaces; this is {sys.platform}. Run code "
        "evaluation on Linux (e.g. in a container).")
  base = tempfile.mkdtemp(prefix="pt_sandbox_")  # 0700: the program never sees it
  try:
    program_path = os.path.join(base, PROGRAM)
    with open(program_path, "w", encoding="utf-8") as f:
      f.write(source)
    if user_namespace is None:
      user_namespace = os.geteuid() != 0
    uid, gid = _sandbox_ids(user_namespace)
    config = dict(program_path=program_path, result_path=os.path.join(
        base, "result.json"), uid=uid, gid=gid, user_namespace=bool(user_namespace),
                  env=dict(limits.env),
                  memory_bytes=int(limits.memory_bytes),
                  cpu_seconds=int(limits.timeout_seconds) + 1,
                  file_bytes=int(limits.file_bytes),
                  tmpfs_bytes=int(limits.tmpfs_bytes),
                  max_processes=int(limits.max_processes))
    config_path = os.path.join(base, "config.json")
    with open(config_path, "w") as f:
      json.dump(config, f)
    nonce = secrets.token_hex(16)
    out_path, err_path = os.path.join(base, "stdout"), os.path.join(base, "stderr")
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
      process = subprocess.Popen(
          [sys.executable, "-I", "-S", CHILD, config_path], stdin=subprocess.PIPE,
          stdout=out, stderr=err, cwd=base, env=dict(limits.env),
          start_new_session=True, close_fds=True)
      timed_out = False
      try:
        process.stdin.write(f"{nonce}\n".encode())
        process.stdin.close()
      except BrokenPipeError:
        pass
      try:
        process.wait(timeout=limits.timeout_seconds)
      except subprocess.TimeoutExpired:
        timed_out = True
      _kill_tree(process)
    seconds = time.monotonic() - start
    (stdout, finished), (stderr, _) = _read(out_path, nonce), _read(err_path, nonce)
    try:
      with open(config["result_path"]) as f:
        report = json.loads(f.read() or "{}")
    except (OSError, ValueError):
      report = {}
    if report.get("setup_error"):
      raise SandboxUnavailableError(
          f"The code sandbox could not isolate the program: {report['setup_error']}. "
          f"{stderr.strip()[-500:]} It needs network, mount and PID namespaces: run "
          "as root (e.g. in a container) or enable unprivileged user namespaces "
          "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces).")
    return Result(_status(timed_out, report, finished), stdout, stderr, seconds)
  finally:
    _remove_tree(base)


def _status(timed_out: bool, report: dict, finished: bool) -> str:
  if timed_out:
    return "timeout"
  if "exit_code" not in report:  # The runner itself died (e.g. killed from outside).
    return "killed"
  if report.get("signal") is not None:
    return "killed"
  code = report["exit_code"]
  if code == 0:
    return "passed" if finished else "exited"
  return "failed" if code == 1 else "exited"
