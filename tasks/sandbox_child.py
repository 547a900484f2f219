"""The sandboxed side of `tasks.sandbox` (standard library only; run as a script).

    python -I -S sandbox_child.py <config.json>     (the nonce arrives on stdin)

This file is trusted code. It is started by `tasks.sandbox.run_program` in a fresh
interpreter (never forked from the harness, whose threads could hold locks), sets up
the isolation, and only then runs the untrusted program:

  1. new namespaces: network (no interfaces but a down loopback), mount, PID; when
     not started as root, also a user namespace that maps the caller's uid to 0;
  2. mounts (private to this process tree): every mount remounted read-only (the
     setup fails if a writable one cannot be), then fresh size-limited tmpfs mounts
     over /tmp, /var/tmp and /dev/shm; the program's directory is WORK on that /tmp,
     so nothing it writes reaches a disk;
  3. fork: the child is PID 1 of the new PID namespace (when it exits, the kernel
     kills every process the program started); it mounts a new /proc (the harness
     and other processes are invisible), sets the resource limits, drops privileges
     (root: to uid/gid `nobody`; otherwise every capability is dropped) and sets
     no_new_privs;
  4. runs the program with `exec` in `__main__`'s namespace; if it returns normally
     (no exception, no `sys.exit`, no `os._exit`), it writes the nonce as the last
     line of stdout. The harness counts the example as passed only with that line.

The runner writes {"setup_error"} or {"exit_code", "signal"} of the program's process
as JSON to `result_path` (opened before the namespaces hide it). Exit codes of that
process: 0 ran to the end (and the nonce line is written), 1 raised, 3 `sys.exit`;
anything else (e.g. `os._exit`) is an early exit too.
"""
import ctypes
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_REMOUNT, MS_BIND = 1024, 2048, 32, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 1, 38, 24
WORK = "/tmp/work"
SETUP_FAILED = 2
RAISED = 1
EXITED_EARLY = 3
# Imported before privileges are dropped: as `nobody` the interpreter's own files may
# be unreadable (e.g. a Python under /root), so later imports of these still work.
PRELOAD = ("math", "cmath", "re", "heapq", "bisect", "collections", "collections.abc",
           "itertools", "functools", "operator", "string", "copy", "array",
           "datetime", "decimal", "fractions", "statistics", "random", "typing",
           "numbers", "struct", "textwrap", "unicodedata", "json", "hashlib",
           "dataclasses", "enum", "queue", "io", "time", "calendar", "socket",
           "subprocess", "shutil", "tempfile", "pathlib", "signal")
_ATIME_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]


class SetupError(RuntimeError):
  pass


def _check(result: int, what: str) -> None:
  if result != 0:
    errno = ctypes.get_errno()
    raise SetupError(f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None) -> None:
  enc = lambda s: None if s is None else s.encode()
  _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
         f"mount {target}")


def _write(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def _enter_namespaces(as_root: bool) -> None:
  uid, gid = os.getuid(), os.getgid()
  flags = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID
  if not as_root:
    flags |= CLONE_NEWUSER
  _check(_libc.unshare(flags), "unshare")
  if not as_root:
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def _mount_points():
  """(mount point, per-mount flags, writable) of every mount, parents first."""
  points = []
  with open("/proc/self/mountinfo") as f:
    for line in f:
      fields = line.split()
      point = fields[4].encode().decode("unicode_escape")
      options = fields[5].split(",")
      flags = 0
      for option in options:
        flags |= _ATIME_FLAGS.get(option, 0)
      points.append((point, flags, "rw" in options))
  return points


def _isolate_filesystem(tmpfs_bytes: int, owner) -> None:
  """Read-only mounts everywhere but fresh tmpfs on /tmp, /var/tmp, /dev/shm."""
  _mount(None, "/", None, MS_REC | MS_PRIVATE)
  for point, flags, writable in _mount_points():
    if point == "/proc" or point.startswith("/proc/"):
      continue  # Replaced by a fresh proc in the PID namespace (its /proc/sys read-only).
    try:
      _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    except SetupError:
      if writable:
        raise
  tmp_options = f"size={tmpfs_bytes},mode=1777"
  for point in ("/tmp", "/var/tmp", "/dev/shm"):
    if os.path.isdir(point):
      _mount("tmpfs", point, "tmpfs", MS_NOSUID | MS_NODEV, tmp_options)
  os.mkdir(WORK, 0o700)
  if owner is not None:
    os.chown(WORK, *owner)
  os.chdir(WORK)


def _limits(config: dict) -> None:
  for name, value in (("RLIMIT_AS", config["memory_bytes"]),
                      ("RLIMIT_CPU", config["cpu_seconds"]),
                      ("RLIMIT_FSIZE", config["file_bytes"]),
                      ("RLIMIT_NOFILE", 64), ("RLIMIT_CORE", 0),
                      ("RLIMIT_NPROC", config["max_processes"])):
    resource.setrlimit(getattr(resource, name), (value, value))


def _drop_privileges(as_root: bool, config: dict) -> None:
  for module in PRELOAD:
    try:
      __import__(module)
    except ImportError:
      pass
  if as_root:
    os.setgroups([])
    os.setgid(config["gid"])
    os.setuid(config["uid"])
  else:  # uid 0 inside our user namespace: drop its capabilities.
    for cap in range(64):
      _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")
  _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _run_program(source: str, nonce: str) -> int:
  try:
    code = compile(source, "program.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # pylint: disable=exec-used
  except SystemExit:
    return EXITED_EARLY
  except BaseException:  # pylint: disable=broad-except
    try:
      traceback.print_exc()
    except BaseException:  # pylint: disable=broad-except
      pass
    return RAISED
  sys.stdout.flush()
  os.write(1, f"\n{nonce}\n".encode())
  return 0


def _init(config: dict, as_root: bool, source: str, nonce: str, ready: int) -> int:
  """PID 1 of the new PID namespace: finishes the isolation, then runs the program."""
  _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
  _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
  _mount("/proc/sys", "/proc/sys", None, MS_BIND)
  _mount(None, "/proc/sys", None,
         MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
  _limits(config)
  _drop_privileges(as_root, config)
  os.environ.clear()
  os.environ.update(config["env"])
  os.write(ready, b"r")  # Isolation complete: the runner stops treating exits as setup errors.
  os.close(ready)
  return _run_program(source, nonce)


def main(config_path: str) -> int:
  """Runs the program isolated; writes {"setup_error", "exit_code", "signal"} JSON."""
  with open(config_path) as f:
    config = json.load(f)
  result = os.open(config["result_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  report = lambda **kw: os.write(result, json.dumps(kw).encode())
  nonce = sys.stdin.readline().strip()
  as_root = os.geteuid() == 0 and not config["user_namespace"]
  with open(config["program_path"], encoding="utf-8") as f:
    source = f.read()
  try:
    _enter_namespaces(as_root)
    _isolate_filesystem(config["tmpfs_bytes"],
                        (config["uid"], config["gid"]) if as_root else None)
  except (SetupError, OSError) as e:
    report(setup_error=str(e))
    return SETUP_FAILED
  sys.stdout.flush()
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:
    os.close(read_end)
    os.close(result)
    status = SETUP_FAILED
    try:
      status = _init(config, as_root, source, nonce, write_end)
    except (SetupError, OSError) as e:
      print(f"sandbox setup failed: {e}", file=sys.stderr)
    finally:
      try:
        sys.stdout.flush()
        sys.stderr.flush()
      finally:
        os._exit(status)  # pylint: disable=protected-access
  os.close(write_end)
  ready = os.read(read_end, 1) == b"r"
  _, status = os.waitpid(pid, 0)
  if not ready:
    report(setup_error="the isolated process failed before running the program "
           "(see stderr)")
    return SETUP_FAILED
  if os.WIFEXITED(status):
    report(exit_code=os.WEXITSTATUS(status), signal=None)
  else:
    report(exit_code=None, signal=os.WTERMSIG(status))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
