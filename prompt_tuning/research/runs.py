"""One gin-configured call of an entry point, runnable three ways.

  run = GinRun("train", ["models/tiny_bundled.gin", "runs/prompt_finetune.gin"],
               [binding("MODEL_DIR", "/tmp/x"), binding("TRAIN_STEPS", 300)])
  run.command()          # 'python -m prompt_tuning.train --gin_file=… --gin.…'
  run.run_in_process()   # parses the gin like the command line and calls the entry
  run.run_subprocess()   # the same command in a child process (exit status)

Every research script drives training and evaluation through these calls, so what a
script does is exactly what its printed command lines do on a cluster.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any, List, Mapping, Optional, Sequence, Tuple

ENTRIES = ("train", "eval", "infer")


class RawGin(str):
  """A value already written in gin syntax (e.g. the VALUE of a --gin flag)."""


def gin_value(value: Any) -> str:
  """A Python value as gin text: `'abc'`, `3`, `None`, `{'inputs': 20}`.

  `RawGin` text and strings starting with `@` or `%` (gin references and macros)
  pass through.
  """
  if isinstance(value, RawGin) or (isinstance(value, str) and value[:1] in ("@", "%")):
    return str(value)
  if isinstance(value, pathlib.PurePath):
    value = str(value)
  return repr(value)


def binding(name: str, value: Any) -> str:
  """`NAME = <gin text of value>`."""
  return f"{name} = {gin_value(value)}"


def split_binding(text: str) -> Tuple[str, str]:
  """`'NAME = VALUE'` → (`NAME`, `VALUE`); errors name the malformed binding."""
  name, sep, value = text.partition("=")
  if not sep or not name.strip():
    raise ValueError(f"Gin binding {text!r} is not of the form 'NAME = VALUE'.")
  return name.strip(), value.strip()


def shell_quote(arg: str) -> str:
  """Quotes one argument for a POSIX shell; `--flag=VALUE` with single quotes in
  VALUE becomes `--flag="VALUE"` (the form used in the docs)."""
  if shlex.quote(arg) == arg:
    return arg
  flag, sep, value = arg.partition("=")
  if sep and shlex.quote(flag) == flag and not any(c in value for c in '"$`\\!'):
    return f'{flag}="{value}"'
  return shlex.quote(arg)


@dataclasses.dataclass(frozen=True)
class GinRun:
  """A call of `python -m prompt_tuning.<entry>` with gin files and bindings.

  Attributes:
    entry: 'train', 'eval' or 'infer'.
    gin_files: in order (searched in the repo's `configs/`).
    bindings: `NAME = VALUE` gin bindings, applied after the files.
  """
  entry: str
  gin_files: Tuple[str, ...]
  bindings: Tuple[str, ...] = ()

  def __post_init__(self):
    if self.entry not in ENTRIES:
      raise ValueError(f"GinRun entry {self.entry!r}: expected one of {ENTRIES}.")
    object.__setattr__(self, "gin_files", tuple(str(f) for f in self.gin_files))
    object.__setattr__(self, "bindings", tuple(self.bindings))
    for b in self.bindings:
      split_binding(b)

  def with_bindings(self, *bindings: str) -> "GinRun":
    return dataclasses.replace(self, bindings=self.bindings + tuple(bindings))

  def argv(self) -> List[str]:
    """The entry point's flags: `--gin_file=F` …, then `--gin.NAME=VALUE` …"""
    flags = [f"--gin_file={f}" for f in self.gin_files]
    for b in self.bindings:
      name, value = split_binding(b)
      flags.append(f"--gin.{name}={value}")
    return flags

  def command(self, python: str = "python") -> str:
    """A shell command line that performs this run (`--gin.X="'text'"` quoting)."""
    return " ".join([python, "-m", f"prompt_tuning.{self.entry}"] +
                    [shell_quote(a) for a in self.argv()])

  def macro(self, name: str) -> Optional[str]:
    """The gin text of the last binding of macro `name` (None when not bound here)."""
    found = None
    for b in self.bindings:
      key, value = split_binding(b)
      if key == name:
        found = value
    return found

  def parse(self) -> None:
    """Clears gin and parses this run's files and bindings (as the command does)."""
    import gin  # pylint: disable=g-import-not-at-top
    from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
    importlib.import_module(f"prompt_tuning.{self.entry}")  # its configurables
    gin.clear_config()
    cli.parse_gin(self.gin_files, self.bindings)

  def run_in_process(self) -> Any:
    """Parses the gin and calls the entry point's function in this process.

    Returns what it returns: `TrainResult` (train), `{task: TaskResult}` (eval),
    `InferSummary` (infer). A training run stopped by SIGTERM raises
    `errors.Preempted` (its checkpoint written), as the command exits non-zero.
    """
    import gin  # pylint: disable=g-import-not-at-top
    from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
    quiet_console()
    self.parse()
    if self.entry == "train":
      from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
      cli.check_required_macros(cli.TRAIN_MACROS)
      return train_lib.raise_if_preempted(train_lib.train(gin_config=gin.config_str()))
    if self.entry == "eval":
      from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
      cli.check_required_macros(eval_lib.EVAL_MACROS)
      return eval_lib.evaluate()
    from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
    cli.check_required_macros(infer_lib.INFER_MACROS)
    return infer_lib.infer()

  def run_subprocess(self, log_file: Optional[str] = None,
                     env: Optional[Mapping[str, str]] = None) -> int:
    """Runs the command in a child Python (this interpreter); returns its status.

    Output goes to `log_file` (appended) when given, else to this process's.
    """
    cmd = [sys.executable, "-m", f"prompt_tuning.{self.entry}"] + self.argv()
    child_env = dict(os.environ, **(env or {}))
    if log_file is None:
      return subprocess.call(cmd, env=child_env)
    pathlib.Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
      log.write(f"$ {self.command()}\n".encode())
      log.flush()
      return subprocess.call(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT)


def run_all(runs: Sequence[GinRun], in_process: bool = True,
            log_file: Optional[str] = None) -> List[Any]:
  """Runs one after another; a failed subprocess raises naming its command."""
  out = []
  for run in runs:
    if in_process:
      out.append(run.run_in_process())
    else:
      status = run.run_subprocess(log_file)
      if status:
        raise RuntimeError(f"Exit status {status}: {run.command()}")
      out.append(status)
  return out


class _OwnInfoFilter:
  """Keeps this package's INFO lines and everyone's warnings on the console."""

  def __init__(self):
    self.package = str(pathlib.Path(__file__).resolve().parents[1])

  def filter(self, record) -> bool:
    if "uncached FunctionDataset" in str(record.msg):
      return False
    return record.levelno >= 30 or str(record.pathname).startswith(self.package)


def quiet_console() -> None:
  """Console logging for in-process runs from an argparse script: the entry points'
  progress and evaluation lines, others' warnings (no absl flag parsing needed)."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  if getattr(quiet_console, "done", False):
    return
  cli.setup_logging()
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoFilter) for f in handler.filters):
    handler.addFilter(_OwnInfoFilter())
  quiet_console.done = True
