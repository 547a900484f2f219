"""Worker processes: one contender each, timed one repetition at a time on request.

A contender is a class with three methods, each returning a JSON-able dict
(`ready`, answered by the worker itself once the imports are done, lets the runner
start every process at once and still compile one contender at a time):

  setup()   build, compile and run the first step (reports compile/first-step time
            and memory measured in this process only)
  rep()     one timed repetition (`{'seconds': …}` plus anything else)
  finish()  final measurements (e.g. peak memory over the steady state)

`Worker` (runner side) starts `python -m benchmarks.worker MODULE:CLASS JSON_KWARGS`
and talks to it over stdin/stdout: a command per line in, one marked JSON line out
(libraries may print to stdout too; only marked lines are read). A contender that
fails reports its traceback, which `Worker` raises with the command that failed.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, Optional

MARK = "@@bench@@ "
_ENV = {
    "JAX_PLATFORMS": "cpu",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",  # the benchmarks never download anything
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


class WorkerError(RuntimeError):
  pass


class Worker:
  """Runner-side handle of one contender process."""

  def __init__(self, target: str, kwargs: Dict[str, Any], name: Optional[str] = None,
               env: Optional[Dict[str, Optional[str]]] = None):
    """`env` overrides the worker environment after `_ENV` (None removes a name,
    e.g. `{'JAX_PLATFORMS': None}` lets JAX pick an accelerator)."""
    from benchmarks.common import REPO  # pylint: disable=g-import-not-at-top
    self.name = name or target
    self.target = target
    self._stderr = tempfile.TemporaryFile(mode="w+")
    overrides, env = dict(env or {}), dict(os.environ, **_ENV)
    for key, value in overrides.items():
      if value is None:
        env.pop(key, None)
      else:
        env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.worker", target, json.dumps(kwargs)],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._stderr, text=True, bufsize=1)

  def request(self, command: str) -> Dict[str, Any]:
    """Sends `ready` | `setup` | `rep` | `finish`; returns the contender's answer."""
    self.send(command)
    return self.receive(command)

  def send(self, command: str):
    """Sends a command without waiting (pair with `receive`)."""
    try:
      self._proc.stdin.write(command + "\n")
      self._proc.stdin.flush()
    except BrokenPipeError:
      pass  # reported by `receive` with the worker's stderr

  def receive(self, command: str) -> Dict[str, Any]:
    """The answer to the last command sent (`command` only names it in errors)."""
    for line in self._proc.stdout:
      if line.startswith(MARK):
        answer = json.loads(line[len(MARK):])
        if "error" in answer:
          raise WorkerError(f"{self.name} ({self.target}) failed on {command!r}:\n"
                            f"{answer['error']}")
        return answer
    self._proc.wait()
    raise WorkerError(f"{self.name} ({self.target}) exited with code "
                      f"{self._proc.returncode} during {command!r}; its stderr ends "
                      f"with:\n{self._stderr_tail()}")

  def _stderr_tail(self, chars: int = 4000) -> str:
    self._stderr.seek(0)
    return self._stderr.read()[-chars:]

  def close(self):
    if self._proc.poll() is None:
      try:
        self._proc.stdin.close()
      except OSError:
        pass
      try:
        self._proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._stderr.close()

  def __enter__(self) -> "Worker":
    return self

  def __exit__(self, *exc):
    self.close()


def _answer(payload: Dict[str, Any]):
  sys.stdout.write(MARK + json.dumps(payload) + "\n")
  sys.stdout.flush()


def serve(target: str, kwargs: Dict[str, Any]) -> int:
  """Worker-side loop: builds the contender, then answers commands until `finish`."""
  started = time.perf_counter()
  try:
    module_name, class_name = target.split(":")
    contender = getattr(importlib.import_module(module_name), class_name)(**kwargs)
  except Exception:  # pylint: disable=broad-except
    _answer({"error": traceback.format_exc()})
    return 1
  import_seconds = time.perf_counter() - started
  for line in sys.stdin:
    command = line.strip()
    if command == "ready":  # answered once the imports are done
      _answer({"import_seconds": import_seconds})
      continue
    if command not in ("setup", "rep", "finish"):
      _answer({"error": f"unknown command {command!r}"})
      return 1
    try:
      result = getattr(contender, command)()
      if command == "setup":
        result.setdefault("import_seconds", import_seconds)
    except Exception:  # pylint: disable=broad-except
      _answer({"error": traceback.format_exc()})
      return 1
    _answer(result)
    if command == "finish":
      return 0
  return 0


if __name__ == "__main__":
  sys.exit(serve(sys.argv[1], json.loads(sys.argv[2])))
