"""Shared pytest fixtures: paths to the read-only artifacts in ../shared/fixtures."""
import importlib.util
import os
import pathlib
import subprocess
import sys

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


def run_entry_point(module: str, args, timeout: float = 900):
  """`python -m <module> <args>` from the repo root on the CPU, the tasks pointed
  at the shared T5 vocabulary; returns the CompletedProcess (text output)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PROMPT_TUNING_VOCAB=str(T5_VOCAB))
  return subprocess.run([sys.executable, "-m", module] + list(args), cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def load_script(name: str):
  """`scripts/<name>.py` imported as a module (its `main` and helpers)."""
  spec = importlib.util.spec_from_file_location(
      f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
