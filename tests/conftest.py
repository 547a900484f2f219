"""Shared pytest fixtures: paths to the read-only artifacts in ../shared/fixtures."""
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, Dict, Mapping

import pytest

# Keep tests on the CPU and quiet; more host devices are requested per test via
# subprocesses where a mesh is needed.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
T5_VOCAB = SHARED_FIXTURES / "t5_vocab" / "sentencepiece.model"
T5X_TINY_CHECKPOINT = SHARED_FIXTURES / "t5x_tiny" / "checkpoint_3"
RELEASED_PROMPTS = SHARED_FIXTURES / "released_prompts" / "t5_1_1_lm100k_base"

# The built-in seqio tasks register when `tasks` is first imported; importing it here
# makes them part of the state every test starts from (see GlobalState below).
import tasks  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import


def run_entry_point(module: str, args, timeout: float = 900):
  """`python -m <module> <args>` from the repo root on the CPU, the tasks pointed
  at the shared T5 vocabulary; returns the CompletedProcess (text output)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PROMPT_TUNING_VOCAB=str(T5_VOCAB))
  return subprocess.run([sys.executable, "-m", module] + list(args), cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
  """A free TCP port on 127.0.0.1 (multi-process tests' coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for(procs: Mapping[Any, subprocess.Popen], timeout: float = 900
             ) -> Dict[Any, str]:
  """Each worker's combined output once all have exited; any still running after
  `timeout` (or when one wait fails) is killed, so no worker outlives its test."""
  logs = {}
  try:
    for key, proc in procs.items():
      logs[key] = proc.communicate(timeout=timeout)[0] or ""
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  return logs


def load_script(name: str):
  """`scripts/<name>.py` imported as a module (its `main` and helpers)."""
  spec = importlib.util.spec_from_file_location(
      f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class GlobalState:
  """Process-wide state a test can change: gin's bindings and search paths, the
  environment, the working directory, and seqio's task and mixture registries.

  `capture()` takes a snapshot; `restore()` puts it back exactly (registrations and
  bindings made since are dropped, removed ones come back).
  """

  def __init__(self):
    import gin.config as gin_config  # pylint: disable=g-import-not-at-top
    self._gin = gin_config
    self.gin_config = dict(gin_config._CONFIG)
    self.gin_imports = set(gin_config._IMPORTS)
    self.gin_operative = dict(gin_config._OPERATIVE_CONFIG)
    self.gin_singletons = dict(gin_config._SINGLETONS)
    self.gin_locked = gin_config._CONFIG_IS_LOCKED
    self.gin_search_paths = list(gin_config._LOCATION_PREFIXES)
    self.environ = dict(os.environ)
    self.cwd = os.getcwd()
    import seqio  # pylint: disable=g-import-not-at-top
    self.registries = {registry: dict(registry._REGISTRY)
                       for registry in (seqio.TaskRegistry, seqio.MixtureRegistry)}

  def restore(self) -> None:
    g = self._gin
    # Values are copied back in place: gin's modules hold references to these objects.
    g._CONFIG.clear()
    g._CONFIG.update({k: dict(v) for k, v in self.gin_config.items()})
    g._IMPORTS.clear()
    g._IMPORTS.update(self.gin_imports)
    with g._OPERATIVE_CONFIG_LOCK:
      g._OPERATIVE_CONFIG.clear()
      g._OPERATIVE_CONFIG.update(self.gin_operative)
    g._SINGLETONS.clear()
    g._SINGLETONS.update(self.gin_singletons)
    g._set_config_is_locked(self.gin_locked)
    g._LOCATION_PREFIXES[:] = self.gin_search_paths
    for key in set(os.environ) - set(self.environ):
      del os.environ[key]
    os.environ.update(self.environ)
    os.chdir(self.cwd)
    for registry, entries in self.registries.items():
      registry._REGISTRY.clear()
      registry._REGISTRY.update(entries)


@pytest.fixture(scope="module", autouse=True)
def _isolate_module():
  """What a module's fixtures and tests change is undone after the module."""
  state = GlobalState()
  yield
  state.restore()


@pytest.fixture(autouse=True)
def _isolate_test():
  """What a test changes (gin, env, cwd, seqio registries) is undone after it, so
  the suite passes in any order (CI shuffles it: pytest-randomly)."""
  state = GlobalState()
  yield
  state.restore()


@pytest.fixture(scope="session")
def shared_fixtures() -> pathlib.Path:
  if not SHARED_FIXTURES.is_dir():
    raise FileNotFoundError(
        f"{SHARED_FIXTURES} is missing: the tests read the shared fixtures that sit "
        "beside the project checkout (../shared/fixtures).")
  return SHARED_FIXTURES


@pytest.fixture(scope="session")
def t5_vocab_path(shared_fixtures) -> str:
  return str(T5_VOCAB)
