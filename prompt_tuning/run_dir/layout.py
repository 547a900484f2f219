"""Every name in a training MODEL_DIR, and the readers of what a run wrote.

  MODEL_DIR/
    config.json                      the run's identity (`read_record`)
    config.gin                       the operative gin config (for people)
    checkpoint_<step>/state, data    orbax train state (`train_state.py`)
    numpy_checkpoints/checkpoint_<step>/<name>.npy   `Method.exported(params)`
    best/<name>.npy + best/best.json the export at the best evaluation so far
    metrics.jsonl                    one JSON line per evaluation (`summaries.py`)
    run.lock                         the run lock (`lock.py`)

Readers take 'best', 'latest' or a step where a run has several exports. Imports
nothing of ours: every other module asks here for a path.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from typing import Any, Dict, List, Optional, Union

import numpy as np

from prompt_tuning.errors import UserError

CONFIG_JSON = "config.json"
CONFIG_GIN = "config.gin"
NUMPY_DIR = "numpy_checkpoints"
BEST_DIR = "best"
BEST_JSON = "best.json"
STEP_PREFIX = "checkpoint"
COMPLETE_JSON = "complete.json"  # written last: the final export and evaluation exist
STATE_DIR = "state"
METRICS_JSONL = "metrics.jsonl"
TELEMETRY_TASK = "telemetry"  # metrics.jsonl lines of training telemetry, not evaluations
LOCK_FILE = "run.lock"

PathLike = Union[str, os.PathLike]
Checkpoint = Union[str, int]  # 'best', 'latest' or a step


def is_model_dir(path: PathLike) -> bool:
  """A directory written by `prompt_tuning.train`: a config.json that records a run
  (a native model checkpoint's config.json is a `T5Config`, without `method`), or
  numpy exports under `numpy_checkpoints/`."""
  path = pathlib.Path(path)
  if (path / NUMPY_DIR).is_dir():
    return True
  config = path / CONFIG_JSON
  if not config.is_file():
    return False
  try:
    record = json.loads(config.read_text())
  except ValueError:
    return False
  return isinstance(record, dict) and "method" in record


class RunConfigNotFoundError(UserError, FileNotFoundError):
  """A directory given as MODEL_DIR has no config.json."""


def read_record(model_dir: PathLike) -> Dict[str, Any]:
  """`MODEL_DIR/config.json` (the run's identity) as a dict."""
  path = pathlib.Path(model_dir) / CONFIG_JSON
  if not path.exists():
    raise RunConfigNotFoundError(f"{path} not found: {model_dir} is not a training "
                            "MODEL_DIR written by prompt_tuning.train.")
  return json.loads(path.read_text())


# ---------------------------------------------------------------- numpy exports


def numpy_checkpoint_dir(model_dir: PathLike, step: int) -> pathlib.Path:
  return pathlib.Path(model_dir) / NUMPY_DIR / f"{STEP_PREFIX}_{step}"


def numpy_steps(model_dir: PathLike) -> List[int]:
  """Steps with a `numpy_checkpoints/checkpoint_<step>/` export, ascending."""
  root = pathlib.Path(model_dir) / NUMPY_DIR
  if not root.is_dir():
    return []
  steps = [int(m.group(1)) for p in root.iterdir()
           if (m := re.fullmatch(rf"{STEP_PREFIX}_(\d+)", p.name))]
  return sorted(steps)


def has_export(model_dir: PathLike, step: int) -> bool:
  return numpy_checkpoint_dir(model_dir, step).is_dir()


def is_complete(model_dir: PathLike, step: int) -> bool:
  """True when a previous run finished everything at `step` (`complete.json`,
  written last by `train_state.mark_complete`).

  A run interrupted after its final checkpoint (during the final evaluation, or
  before its export) is not complete: a rerun finishes it.
  """
  path = pathlib.Path(model_dir) / COMPLETE_JSON
  try:
    return json.loads(path.read_text()).get("step") == int(step)
  except (OSError, ValueError):
    return False


def stopped_early(model_dir: PathLike) -> bool:
  """True when `complete.json` says early stopping ended the run."""
  try:
    return bool(json.loads((pathlib.Path(model_dir) / COMPLETE_JSON).read_text()).get(
        "early_stopped"))
  except (OSError, ValueError):
    return False


def read_best_record(model_dir: PathLike) -> Optional[Dict[str, Any]]:
  """`best/best.json` (step, metric, value), or None before the first evaluation."""
  path = pathlib.Path(model_dir) / BEST_DIR / BEST_JSON
  return json.loads(path.read_text()) if path.exists() else None


class ExportNotFoundError(UserError, FileNotFoundError):
  """A MODEL_DIR has no export to evaluate."""


def export_dir(model_dir: PathLike, checkpoint: Checkpoint = "best") -> pathlib.Path:
  """The numpy export of a training MODEL_DIR: 'best', 'latest' or a step."""
  if checkpoint == "best":
    path = pathlib.Path(model_dir) / BEST_DIR
    if path.is_dir():
      return path
    logging.warning("%s has no best/ export (no evaluation ran); using the latest.",
                    model_dir)
    checkpoint = "latest"
  steps = numpy_steps(model_dir)
  if not steps:
    raise ExportNotFoundError(f"{model_dir} has no numpy exports under "
                              f"{NUMPY_DIR}/; was it written by prompt_tuning.train?")
  step = steps[-1] if checkpoint == "latest" else int(checkpoint)
  if step not in steps:
    raise ExportNotFoundError(f"No export for step {step} in {model_dir}/"
                              f"{NUMPY_DIR}; available steps: {steps}.")
  return numpy_checkpoint_dir(model_dir, step)


def read_arrays(directory: PathLike) -> Dict[str, np.ndarray]:
  """`{name: array}` from a directory of `.npy` files."""
  directory = pathlib.Path(directory)
  files = sorted(directory.glob("*.npy"))
  if not files:
    raise FileNotFoundError(f"No .npy files in {directory}.")
  return {f.name[:-len(".npy")]: np.load(f, allow_pickle=False) for f in files}


def exported_arrays(model_dir: PathLike, checkpoint: Checkpoint = "best"
                    ) -> Dict[str, np.ndarray]:
  """The `.npy` export of a run: best/, the latest or a step's numpy checkpoint."""
  return read_arrays(export_dir(model_dir, checkpoint))


# ---------------------------------------------------------------- orbax state


def has_checkpoints(model_dir: PathLike) -> bool:
  """True when `MODEL_DIR` holds a finished orbax checkpoint to resume from."""
  root = pathlib.Path(model_dir)
  return root.is_dir() and any(re.fullmatch(rf"{STEP_PREFIX}_\d+", p.name)
                               for p in root.iterdir())


def state_steps(model_dir: PathLike) -> List[int]:
  """Steps of the complete orbax checkpoints `checkpoint_<step>/state`, ascending."""
  root = pathlib.Path(model_dir)
  if not root.is_dir():
    return []
  steps = [int(m.group(1)) for p in root.iterdir()
           if (m := re.fullmatch(rf"{STEP_PREFIX}_(\d+)", p.name)) and
           (p / STATE_DIR).is_dir()]
  return sorted(steps)


def latest_step(model_dir: PathLike) -> Optional[int]:
  steps = state_steps(model_dir)
  return steps[-1] if steps else None


def is_finished(model_dir: PathLike, train_steps: int) -> bool:
  """True when the run saved its final checkpoint (the trainer saves at the end)."""
  step = latest_step(model_dir)
  return step is not None and step >= train_steps


def resolve_step(model_dir: PathLike, checkpoint: Checkpoint = "latest") -> int:
  """'latest', 'best' (the step of best/best.json) or a step → a saved state step."""
  steps = state_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"{model_dir} has no orbax checkpoint_<step>/state; was "
                            "it written by prompt_tuning.train?")
  if checkpoint == "latest":
    return steps[-1]
  if checkpoint == "best":
    best = read_best_record(model_dir)
    if best is None:
      raise FileNotFoundError(f"{model_dir}/best/best.json not found (no evaluation "
                              "ran); use 'latest' or a step.")
    step = int(best["step"])
  else:
    step = int(checkpoint)
  if step not in steps:
    raise FileNotFoundError(f"{model_dir}: no orbax checkpoint for step {step}; "
                            f"saved steps: {steps} (KEEP_CHECKPOINTS keeps the newest "
                            "only; use the numpy export for prompts).")
  return step


def state_dir(model_dir: PathLike, step: int) -> pathlib.Path:
  """`MODEL_DIR/checkpoint_<step>/state` as an absolute path (orbax needs one)."""
  return (pathlib.Path(model_dir) / f"{STEP_PREFIX}_{step}" / STATE_DIR).absolute()


# ---------------------------------------------------------------- metrics


def metrics_lines(model_dir: PathLike) -> List[Dict[str, Any]]:
  """Every line of `MODEL_DIR/metrics.jsonl` (empty when there is none)."""
  path = pathlib.Path(model_dir) / METRICS_JSONL
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluations(model_dir: PathLike, task: Optional[str] = None
                ) -> List[Dict[str, Any]]:
  """Evaluation lines (`{"step", "task", <metrics>}`), optionally of one task."""
  return [r for r in metrics_lines(model_dir)
          if r.get("task") not in ("best", TELEMETRY_TASK)
          and (task is None or r.get("task") == task)]
