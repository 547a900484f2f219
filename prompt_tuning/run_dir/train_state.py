"""What a training run writes to `MODEL_DIR` (names and readers: `layout.py`).

  MODEL_DIR/
    config.json                      the run's identity: initial checkpoint, model
                                     config, method, trainable regexes, task, …
    config.gin                       the operative gin config (for people)
    checkpoint_<step>/               orbax: trainable params + optimizer state + step
                                     (`state`) and the data position (`data`)
    numpy_checkpoints/checkpoint_<step>/<name>.npy   `Method.exported(params)`
    best/<name>.npy + best/best.json the export at the best evaluation so far
    complete.json                    {"step": N}: the run finished (final export,
                                     evaluation and best/ written); a rerun of a
                                     run stopped before it finishes the rest
    model_fingerprint.json           the frozen model the run trains on
                                     (`prompt_tuning.fingerprint`); copied next to
                                     every exported `<name>.npy` as
                                     `<name>.model.json`

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
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning.run_dir import identity as run_identity
from prompt_tuning.errors import UserError, WriteError, free_space, write_error
from prompt_tuning import fingerprint
from prompt_tuning.params import flatten
from prompt_tuning.run_dir import layout
from prompt_tuning.run_dir.layout import (BEST_DIR, BEST_JSON, COMPLETE_JSON,
                                          CONFIG_JSON, STEP_PREFIX, has_checkpoints,
                                          numpy_checkpoint_dir, numpy_steps)


# ------------------------------------------------------------------------------------
# Orbax training state.
# ------------------------------------------------------------------------------------


class CheckpointWriteError(WriteError):
  """A checkpoint or export could not be written; the previous one is intact."""


class CheckpointDamagedError(UserError, ValueError):
  """The only checkpoint to resume from cannot be read."""


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint holds other state than this run trains (e.g. another optimizer)."""


def _key_name(key) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def state_keys(tree: Any) -> List[str]:
  """The `/`-joined paths of a state tree's arrays, as orbax names them."""
  return sorted("/".join(_key_name(k) for k in path)
                for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def _write_failed(what: pathlib.Path, error: BaseException,
                  latest: Optional[int]) -> CheckpointWriteError:
  kept = (f"the latest complete checkpoint is still {what.parent}/{STEP_PREFIX}_"
          f"{latest}" if latest is not None else "no checkpoint was completed yet")
  reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
  return CheckpointWriteError(
      f"Could not write {what} ({reason}; {free_space(what.parent)}). Nothing partial "
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

  def saved_keys(self, step: int) -> List[str]:
    """The array paths checkpoint `step` holds (from its metadata, nothing loaded)."""
    path = self.directory / f"{STEP_PREFIX}_{step}" / "state" / "_METADATA"
    meta = json.loads(path.read_text())
    keys = []
    for entry in meta["tree_metadata"].values():
      value = entry.get("value_metadata") or {}
      if value.get("skip_deserialize") or value.get("value_type") == "None":
        continue
      keys.append("/".join(str(k["key"]) for k in entry["key_metadata"]))
    return sorted(keys)

  def check_matches(self, step: int, abstract_state: Mapping[str, Any]) -> None:
    """Raises CheckpointMismatchError when checkpoint `step` holds other arrays
    than `abstract_state` (a changed optimizer or trainable set), naming them."""
    saved, wanted = set(self.saved_keys(step)), set(state_keys(dict(abstract_state)))
    if saved == wanted:
      return
    only_saved, only_wanted = sorted(saved - wanted), sorted(wanted - saved)
    what = ("the optimizer changed" if all(k.startswith("opt_state/")
                                           for k in only_saved + only_wanted)
            else "the trained parameters or the optimizer changed")
    raise CheckpointMismatchError(
        f"Cannot resume from {self.directory}/{STEP_PREFIX}_{step}: {what} since it "
        f"was written (it holds {len(only_saved)} arrays this run does not have, e.g. "
        f"{only_saved[:3]}; this run needs {len(only_wanted)} it does not hold, e.g. "
        f"{only_wanted[:3]}). Resume with the original OPTIMIZER and method (see "
        f"{self.directory / 'config.gin'}), or start a new --gin.MODEL_DIR.")

  def restore_latest(self, abstract_state: Mapping[str, Any]
                     ) -> Optional[Tuple[int, Dict[str, Any], int, Dict[str, Any]]]:
    """The newest readable checkpoint: (step, state, batches_consumed, data).

    A damaged newest checkpoint (missing or corrupt files) is moved aside to
    `damaged_checkpoint_<step>` with a warning and the previous one is used; when
    none is left, CheckpointDamagedError says what to do. A checkpoint of other
    state (CheckpointMismatchError) is never skipped. None: no checkpoint.
    """
    steps = sorted(self.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        self.check_matches(step, abstract_state)
        state, batches_consumed = self.restore(step, abstract_state)
        data = self.read_data(step)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (any damage)
        path = self.directory / f"{STEP_PREFIX}_{step}"
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if i + 1 == len(steps):
          raise CheckpointDamagedError(
              f"{path} cannot be read ({reason}) and there is no earlier checkpoint "
              f"to resume from: move it away (e.g. to {path.parent}/damaged_"
              f"{path.name}) to restart this run from step 0, or start a new "
              "--gin.MODEL_DIR.") from e
        aside = path.with_name(f"damaged_{path.name}")
        if jax.process_index() == 0:
          shutil.rmtree(aside, ignore_errors=True)
          path.rename(aside)
        self.manager.reload()
        logging.warning("%s is damaged (%s); moved it to %s and resuming from the "
                        "previous complete checkpoint, %s_%d.", path, reason, aside,
                        STEP_PREFIX, steps[i + 1])
        continue
      return step, state, batches_consumed, data
    return None

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
                 extra_name: str = BEST_JSON,
                 model: Optional[Mapping[str, Any]] = None) -> None:
  """Writes `<name>.npy` per array into `directory`, replacing it atomically.

  `model`: a `fingerprint` record written next to each array as
  `<name>.model.json`.
  """
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp",
                                      dir=directory.parent))
  current = directory
  try:
    for name, value in arrays.items():
      current = directory / f"{name}.npy"
      _save_npy(tmp / f"{name}.npy", value)
      if model is not None:
        fingerprint.write_sidecar(tmp / f"{name}.npy", model)
    if extra is not None:
      current = directory / extra_name
      (tmp / extra_name).write_text(json.dumps(extra, indent=2, sort_keys=True))
  except OSError as e:  # e.g. disk full: keep nothing partial
    shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointWriteError(
        f"Could not write {current} ({e.strerror or e}; {free_space(directory)}). "
        "Nothing partial was kept (the previous export, if any, is intact). Free "
        f"disk space (or fix the quota / permissions of {directory.parent}), then "
        "rerun the same command.") from e
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
  write_arrays(str(path), arrays, model=fingerprint.read_run(model_dir))
  if keep:
    for old in numpy_steps(model_dir)[:-keep]:
      shutil.rmtree(numpy_checkpoint_dir(model_dir, old), ignore_errors=True)
  return path


def mark_complete(model_dir: str, step: int, early_stopped: bool = False) -> None:
  """Records that the run finished at `step`: final checkpoint, export and
  evaluation (with best/) all written. Written last, atomically (read by
  `layout.is_complete`); `early_stopped` marks a run that early stopping ended
  before `train_steps`."""
  record = {"step": int(step)}
  if early_stopped:
    record["early_stopped"] = True
  write_text(pathlib.Path(model_dir) / COMPLETE_JSON, json.dumps(record))


def export_best(model_dir: str, arrays: Mapping[str, np.ndarray],
                record: Mapping[str, Any]) -> pathlib.Path:
  path = pathlib.Path(model_dir) / BEST_DIR
  write_arrays(str(path), arrays, extra=record, model=fingerprint.read_run(model_dir))
  return path


def export_task_bests(model_dir: str, arrays: Mapping[str, np.ndarray],
                      record: Mapping[str, Any],
                      tasks: Mapping[str, Tuple[Mapping[str, np.ndarray],
                                                Mapping[str, Any]]]) -> pathlib.Path:
  """A multi-task run's `best/`: the bank of every task's best prompt (`arrays`,
  `record`) and one `best/<task>/` per task (its arrays and best.json), built in a
  temporary directory and swapped in whole, so readers never see a mix."""
  root = pathlib.Path(model_dir)
  model = fingerprint.read_run(model_dir)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{BEST_DIR}.tasks", dir=root))
  try:
    built = staging / BEST_DIR
    write_arrays(str(built), arrays, extra=record, model=model)
    for task, (task_arrays, task_record) in tasks.items():
      write_arrays(str(built / task), task_arrays, extra=task_record, model=model)
    target = root / BEST_DIR
    old = root / f".{BEST_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
      target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return root / BEST_DIR


def write_model_fingerprint(model_dir: str, record: Mapping[str, Any]) -> pathlib.Path:
  """Records the frozen model of the run (`fingerprint.of_params(...)`); every later
  `export_step` / `export_best` writes it next to each exported array. Host 0."""
  return fingerprint.write_run(model_dir, record)


# ------------------------------------------------------------------------------------
# The run's identity (config.json).
# ------------------------------------------------------------------------------------

# Fields of config.json that must match to resume in the same MODEL_DIR (the others,
# e.g. train_steps or eval_period, may change between restarts).
IDENTITY_FIELDS = run_identity.IDENTITY_FIELDS


def check_or_write_run_config(model_dir: str, record: Mapping[str, Any],
                              write: bool = True) -> None:
  """Writes `config.json`, or refuses when `MODEL_DIR` holds a different run.

  A different `config.json` without any checkpoint (a run that failed before its
  first save) is replaced.

  Raises:
    ValueError: naming the fields that differ and how to resume or start fresh.
  """
  path = pathlib.Path(model_dir) / CONFIG_JSON
  record = run_identity.normalized(record)  # tuples → lists etc.
  if path.exists():
    old = json.loads(path.read_text())
    diffs = run_identity.differences(old, record)
    if not diffs:  # the original record stays (e.g. its initializer)
      return
    if has_checkpoints(model_dir):
      raise RunIdentityError(
          f"MODEL_DIR {model_dir} was used by a run with a different configuration "
          f"({'; '.join(diffs)}). Nothing was written. To resume that run, rerun it "
          f"with its original gin files and flags (see "
          f"{pathlib.Path(model_dir) / 'config.gin'}); to start fresh, pass a new "
          "--gin.MODEL_DIR=... or delete the directory.")
    if write:
      logging.warning("Replacing %s (no checkpoint was written under it): %s", path,
                      "; ".join(diffs))
  if write:
    write_text(path, json.dumps(record, indent=2, sort_keys=True))


def write_text(path: pathlib.Path, text: str) -> None:
  """Replaces a small file atomically; a failure (disk full) is one WriteError."""
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise write_error(path, e) from e


class RunIdentityError(UserError, ValueError):
  """MODEL_DIR holds a run with a different identity (config.json)."""


# Optimizer arguments that make the learning rate depend on the run's length.
LENGTH_DEPENDENT_SCHEDULE = ("total_steps",)


def continue_finished(finished_dir: str, model_dir: str) -> None:
  """Starts an empty `model_dir` as a copy of a finished run, so that training it
  with a larger TRAIN_STEPS resumes where that run ended instead of from step 0.

  Continuing equals training the longer run from scratch (the data stream and the
  dropout keys depend on the global step only, the optimizer state is restored),
  as long as the learning rate does not depend on the run's length: a run whose
  optimizer binds `total_steps` is refused. Everything else is checked by the
  resume itself (config.json must match the longer run's identity).

  Raises:
    ValueError: `model_dir` is not empty, `finished_dir` did not finish, or its
      schedule depends on its length.
  """
  source, target = pathlib.Path(finished_dir), pathlib.Path(model_dir)
  if target.exists() and any(target.iterdir()):
    raise ValueError(f"{target} is not empty; only a new run can continue "
                     f"{source}.")
  if not (source / COMPLETE_JSON).is_file():
    raise ValueError(f"{source} did not finish; rerun it to finish it first.")
  if json.loads((source / COMPLETE_JSON).read_text()).get("early_stopped"):
    raise ValueError(f"{source} was ended by early stopping, not by its TRAIN_STEPS: "
                     "a longer run cannot continue it.")
  record = json.loads((source / CONFIG_JSON).read_text())
  arguments = (record.get("optimizer_spec") or {}).get("arguments") or {}
  bound = [k for k in LENGTH_DEPENDENT_SCHEDULE if arguments.get(k) is not None]
  if bound:
    raise ValueError(f"{source}'s learning rate depends on its length ({bound[0]} = "
                     f"{arguments[bound[0]]}): a longer run cannot continue it; "
                     "train the longer run from scratch.")
  staging = target.with_name(f".{target.name}.continuing{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  shutil.copytree(source, staging, ignore=shutil.ignore_patterns(
      COMPLETE_JSON, layout.LOCK_FILE, "*.orbax-checkpoint-tmp*"))
  try:
    if target.exists():
      target.rmdir()
    staging.rename(target)
  except OSError as e:  # another process started the run meanwhile
    shutil.rmtree(staging, ignore_errors=True)
    raise ValueError(f"{target} was started by another process meanwhile.") from e


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
