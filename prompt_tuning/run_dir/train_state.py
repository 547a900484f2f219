"""What a training run writes to `MODEL_DIR` (names and readers: `layout.py`).

  MODEL_DIR/
    config.json                      the run's identity: initial checkpoint, model
                                     config, method, trainable regexes, task, …
    config.gin                       the operative gin config (for people)
    checkpoint_<step>/               orbax: trainable params + optimizer state + step
                                     (`state`) and the data position (`data`)
    numpy_checkpoints/checkpoint_<step>/<name>.npy   `Method.exported(params)`
    best/<name>.npy + best/best.json the export at the best evaluation so far

The frozen model is never re-saved: `config.json` records where it came from.
Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a preempted save never leaves a half-written `checkpoint_<step>`; a save that
fails (disk full, no permission) raises `CheckpointWriteError` after removing its
temporary directory, leaving the previous checkpoint as the latest.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning.params import flatten
from prompt_tuning.run_dir import layout
from prompt_tuning.run_dir.layout import (BEST_DIR, BEST_JSON, CONFIG_JSON,
                                          STEP_PREFIX, has_checkpoints,
                                          numpy_checkpoint_dir, numpy_steps)


# ------------------------------------------------------------------------------------
# Orbax training state.
# ------------------------------------------------------------------------------------


class CheckpointWriteError(OSError):
  """A checkpoint or export could not be written; the previous one is intact."""


def _write_failed(what: pathlib.Path, error: BaseException,
                  latest: Optional[int]) -> CheckpointWriteError:
  kept = (f"the latest complete checkpoint is still {what.parent}/{STEP_PREFIX}_"
          f"{latest}" if latest is not None else "no checkpoint was completed yet")
  return CheckpointWriteError(
      f"Could not write {what}: {error} ({type(error).__name__}). Nothing partial "
      f"was kept: {kept}. Free disk space (or fix the quota / permissions of "
      f"{what.parent}), then rerun the same command to resume from there.")


def _remove_partial(directory: pathlib.Path, name: str) -> None:
  """Deletes the temporary directories of an unfinished write of `name`."""
  for path in directory.glob(f"{name}.orbax-checkpoint-tmp*"):
    shutil.rmtree(path, ignore_errors=True)


class StateCheckpointer:
  """Saves and restores `{'step', 'trainable', 'opt_state'}` + data position.

  All processes call `save` / `restore` (orbax coordinates multi-host writes).
  """

  def __init__(self, model_dir: str, keep: Optional[int] = 1):
    self.directory = pathlib.Path(model_dir).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, step_prefix=STEP_PREFIX, create=True,
        enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> List[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Mapping[str, Any], batches_consumed: int,
           data: Optional[Mapping[str, Any]] = None) -> None:
    """Writes checkpoint `step` (blocking; atomic).

    Args:
      step: the step number (`checkpoint_<step>`).
      state: `{'step', 'trainable', 'opt_state'}`.
      batches_consumed: the data position.
      data: more JSON-able counters stored with the data position.

    Raises:
      CheckpointWriteError: the write failed (e.g. disk full); the partial
        temporary directory is removed and the previous checkpoint stays latest.
    """
    record = {**(data or {}), "batches_consumed": int(batches_consumed)}
    latest = self.latest_step()
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(dict(state)), data=ocp.args.JsonSave(record)),
                        force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      _remove_partial(self.directory, f"{STEP_PREFIX}_{step}")
      raise _write_failed(self.directory / f"{STEP_PREFIX}_{step}", e, latest) from e
    logging.info("Saved checkpoint %s/%s_%d.", self.directory, STEP_PREFIX, step)

  def read_data(self, step: int) -> Dict[str, Any]:
    """The data record of checkpoint `step` (`batches_consumed` and counters)."""
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore()))["data"])

  def restore(self, step: int, abstract_state: Mapping[str, Any]
              ) -> Tuple[Dict[str, Any], int]:
    """Restores into `abstract_state` (`jax.ShapeDtypeStruct`s with shardings).

    Returns:
      (state, batches_consumed).
    """
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(dict(abstract_state)),
        data=ocp.args.JsonRestore()))
    return restored["state"], int(restored["data"]["batches_consumed"])

  def restore_trainable(self, step: int, abstract_trainable: Any) -> Any:
    """Only the trained parameters of checkpoint `step`, as host numpy arrays.

    `abstract_trainable` is the trainable subtree (arrays or ShapeDtypeStructs); the
    optimizer state is not read (evaluation of e.g. a model-tuning run).
    """
    item = {"trainable": jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), abstract_trainable)}
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                     partial_restore=True)))
    return restored["state"]["trainable"]

  def close(self) -> None:
    self.manager.close()


# ------------------------------------------------------------------------------------
# Numpy exports (host 0 only).
# ------------------------------------------------------------------------------------


def write_arrays(directory: str, arrays: Mapping[str, np.ndarray],
                 extra: Optional[Mapping[str, Any]] = None,
                 extra_name: str = BEST_JSON) -> None:
  """Writes `<name>.npy` per array into `directory`, replacing it atomically."""
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp",
                                      dir=directory.parent))
  try:
    for name, value in arrays.items():
      _save_npy(tmp / f"{name}.npy", value)
    if extra is not None:
      (tmp / extra_name).write_text(json.dumps(extra, indent=2, sort_keys=True))
  except OSError as e:  # e.g. disk full: keep nothing partial
    shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointWriteError(
        f"Could not write {directory}: {e}. Nothing partial was kept (the previous "
        f"export, if any, is intact). Free disk space (or fix the quota / "
        f"permissions of {directory.parent}), then rerun the same command.") from e
  if directory.exists():
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
  else:
    tmp.rename(directory)


def export_step(model_dir: str, step: int, arrays: Mapping[str, np.ndarray],
                keep: Optional[int] = None) -> pathlib.Path:
  """Writes `numpy_checkpoints/checkpoint_<step>/` and keeps the newest `keep`."""
  path = numpy_checkpoint_dir(model_dir, step)
  write_arrays(str(path), arrays)
  if keep:
    for old in numpy_steps(model_dir)[:-keep]:
      shutil.rmtree(numpy_checkpoint_dir(model_dir, old), ignore_errors=True)
  return path


def export_best(model_dir: str, arrays: Mapping[str, np.ndarray],
                record: Mapping[str, Any]) -> pathlib.Path:
  path = pathlib.Path(model_dir) / BEST_DIR
  write_arrays(str(path), arrays, extra=record)
  return path


# ------------------------------------------------------------------------------------
# The run's identity (config.json).
# ------------------------------------------------------------------------------------

# Fields of config.json that must match to resume in the same MODEL_DIR (the others,
# e.g. train_steps or eval_period, may change between restarts).
IDENTITY_FIELDS = ("initial_checkpoint_path", "model_config", "method", "trainable",
                   "task", "task_feature_lengths", "batch_size", "seed")


def check_or_write_run_config(model_dir: str, record: Mapping[str, Any],
                              write: bool = True) -> None:
  """Writes `config.json`, or refuses when `MODEL_DIR` holds a different run.

  A different `config.json` without any checkpoint (a run that failed before its
  first save) is replaced.

  Raises:
    ValueError: naming the fields that differ and how to resume or start fresh.
  """
  path = pathlib.Path(model_dir) / CONFIG_JSON
  record = json.loads(json.dumps(record, default=str))  # normalize tuples etc.
  if path.exists():
    old = json.loads(path.read_text())
    diffs = [f"  {k}: {old.get(k)!r} in {path} vs {record.get(k)!r} now"
             for k in IDENTITY_FIELDS if old.get(k) != record.get(k)]
    if not diffs:
      return
    if has_checkpoints(model_dir):
      raise ValueError(
          f"MODEL_DIR {model_dir} was used by a run with a different configuration:\n"
          + "\n".join(diffs) + "\nTo resume that run, rerun it with its original "
          f"gin files and flags (see {pathlib.Path(model_dir) / 'config.gin'}); to "
          "start fresh, pass a new --gin.MODEL_DIR=... or delete the directory.")
    logging.warning("Replacing %s (no checkpoint was written under it):\n%s", path,
                    "\n".join(diffs))
  if write:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------
# Single arrays and the trained parameters of a finished run.
# ------------------------------------------------------------------------------------


def _save_npy(path: pathlib.Path, array: Any) -> None:
  with open(path, "wb") as f:
    np.save(f, np.asarray(array), allow_pickle=False)


def write_npy(path: Union[str, os.PathLike], array: Any) -> None:
  """Writes one `.npy` atomically: a temporary file in the same directory, renamed."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    _save_npy(pathlib.Path(tmp), array)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def read_trainable(model_dir: Union[str, os.PathLike],
                   checkpoint: layout.Checkpoint = "latest") -> Dict[str, np.ndarray]:
  """{path: array} of the trainable parameters in the orbax state at a step.

  Only the `trainable` subtree is read (not the optimizer state).
  """
  step = layout.resolve_step(model_dir, checkpoint)
  path = layout.state_dir(model_dir, step)
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  if "trainable" not in tree:
    raise ValueError(f"{path} holds {sorted(tree)}, not a training state with a "
                     "'trainable' subtree.")
  wanted = {"trainable": tree["trainable"]}
  args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                wanted)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=args, partial_restore=True))
  return {k: np.asarray(v) for k, v in flatten(restored["trainable"]).items()}
