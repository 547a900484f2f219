"""The one error path of the command lines: user errors versus bugs.

A `UserError` is something the person running the command can fix (a missing file,
a prompt of the wrong shape, a misspelt macro, a MODEL_DIR of another run). Every
entry point (train, eval, infer) and every script reports it the same way: one line
on stderr, `<prog>: error: <what is wrong and how to fix it>`, exit status
`EXIT_USER_ERROR`, no traceback. Any other exception is a bug and keeps its
traceback.

Exit statuses (documented in docs/TROUBLESHOOTING.md):
  0                   done (a rerun of a finished run is done too)
  EXIT_USER_ERROR     1: a user error, as above
  EXIT_PREEMPTED      143 (128 + SIGTERM): training stopped on SIGTERM after writing
                      a checkpoint; rerun the same command to resume

This module imports nothing of ours, so any layer may raise these.
"""
from __future__ import annotations

import pathlib
import shutil
import sys
from typing import Any, Callable, NoReturn, Optional, Union

EXIT_USER_ERROR = 1
EXIT_PREEMPTED = 143  # 128 + signal.SIGTERM, what shells report for a TERM'd job


class UserError(Exception):
  """A problem the user can fix; the message names the thing and the fix."""


class Preempted(UserError):
  """Training stopped on SIGTERM after writing a checkpoint (exit 143)."""
  exit_code = EXIT_PREEMPTED


class WriteError(UserError, OSError):
  """A file under MODEL_DIR (or an output) could not be written: disk full, quota,
  permissions. The message names the file and the free space."""


def free_space(path: Union[str, pathlib.Path]) -> str:
  """'<n> MB free on <dir>' for the nearest existing parent of `path`."""
  path = pathlib.Path(path)
  for parent in [path, *path.parents]:
    if parent.exists():
      try:
        free = shutil.disk_usage(parent).free
      except OSError:
        break
      return f"{free / 1e6:.1f} MB free on {parent}"
  return "free space unknown"


def write_error(path: Union[str, pathlib.Path], error: BaseException,
                then: str = "then rerun the same command") -> WriteError:
  """`Could not write <path> (<reason>; <free space>). Free disk space …`."""
  reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(
      error).splitlines()[0]
  return WriteError(f"Could not write {path} ({reason}; {free_space(path)}). Free disk "
                    f"space (or fix the quota / permissions of "
                    f"{pathlib.Path(path).parent}), {then}.")


def one_line(error: BaseException) -> str:
  """The error's message on one line (gin's "In call to configurable" notes cut)."""
  message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(
      error)
  message = message.split("\n  In call to configurable")[0]
  return " ".join(part.strip() for part in message.splitlines() if part.strip())


def exit_with(prog: str, error: UserError) -> NoReturn:
  """Prints `<prog>: error: <message>` and exits with the error's status."""
  print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(getattr(error, "exit_code", EXIT_USER_ERROR))


def run_reporting(prog: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
  """`fn(*args, **kwargs)`; a `UserError` becomes one line and a non-zero exit."""
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    exit_with(prog, e)


def user_error_cause(error: BaseException) -> Optional[UserError]:
  """The UserError `error` is or wraps (gin re-raises inside configurables)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, UserError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None
