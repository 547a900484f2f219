"""Reading a training MODEL_DIR (see `prompt_tuning.run_dir.train_state`).

  record(model_dir)                  config.json: method, task, model config, …
  evaluations(model_dir, task=None)  the metrics.jsonl evaluation lines
  state_steps(model_dir)             steps with an orbax `checkpoint_<step>/`
  is_finished(model_dir, steps)      a checkpoint at (or past) `steps` exists
  trained_params(model_dir, step)    {path: array} of the trainable parameters as
                                     trained (orbax state; the whole model for
                                     model tuning)
  full_params(model_dir, step)       the frozen model it started from + the trained
                                     parameters: (T5Config, {path: array})
  export_model(model_dir, step)      a model-tuned MODEL_DIR → native checkpoint
                                     (what `prompt_tuning.eval` reads as
                                     INITIAL_CHECKPOINT_PATH)
  prompt_of(source)                  the `[P, H]` prompt of a .npy / export dir /
                                     PEFT adapter / MODEL_DIR

Paths are `/`-joined T5X parameter paths (`encoder/prompt/prompt`).
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from prompt_tuning.run_dir import train_state as ckpt

PathLike = Union[str, pathlib.Path]
Checkpoint = Union[str, int]  # 'best', 'latest' or a step
EXPORTED_MODEL_PREFIX = "model_export"
PROMPT_EXPORT = "encoder.prompt.prompt"


def is_model_dir(path: PathLike) -> bool:
  """A directory written by `prompt_tuning.train`: its config.json records a run
  (a native model checkpoint's config.json is a `T5Config`, without `method`)."""
  path = pathlib.Path(path) / ckpt.CONFIG_JSON
  if not path.is_file():
    return False
  try:
    return "method" in json.loads(path.read_text())
  except ValueError:
    return False


def record(model_dir: PathLike) -> Dict[str, Any]:
  return ckpt.read_run_config(str(model_dir))


def metrics_lines(model_dir: PathLike) -> List[Dict[str, Any]]:
  """Every line of `MODEL_DIR/metrics.jsonl` (empty when there is none)."""
  path = pathlib.Path(model_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluations(model_dir: PathLike, task: Optional[str] = None
                ) -> List[Dict[str, Any]]:
  """Evaluation lines (`{"step", "task", <metrics>}`), optionally of one task."""
  return [r for r in metrics_lines(model_dir)
          if r.get("task") != "best" and (task is None or r.get("task") == task)]


def state_steps(model_dir: PathLike) -> List[int]:
  """Steps of the complete orbax checkpoints `checkpoint_<step>/state`."""
  root = pathlib.Path(model_dir)
  if not root.is_dir():
    return []
  steps = [int(m.group(1)) for p in root.iterdir()
           if (m := re.fullmatch(rf"{ckpt.STEP_PREFIX}_(\d+)", p.name)) and
           (p / "state").is_dir()]
  return sorted(steps)


def latest_step(model_dir: PathLike) -> Optional[int]:
  steps = state_steps(model_dir)
  return steps[-1] if steps else None


def is_finished(model_dir: PathLike, train_steps: int) -> bool:
  """True when the run saved its final checkpoint (the trainer saves at the end)."""
  step = latest_step(model_dir)
  return step is not None and step >= train_steps


def resolve_step(model_dir: PathLike, checkpoint: Checkpoint = "latest") -> int:
  """'latest', 'best' (the step of best/best.json) or a step → a saved step."""
  steps = state_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"{model_dir} has no orbax checkpoint_<step>/state; was "
                            "it written by prompt_tuning.train?")
  if checkpoint == "latest":
    return steps[-1]
  if checkpoint == "best":
    best = ckpt.read_best_record(str(model_dir))
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


def trained_params(model_dir: PathLike, checkpoint: Checkpoint = "latest"
                   ) -> Dict[str, np.ndarray]:
  """{path: array} of the trainable parameters in the orbax state at a step.

  Only the `trainable` subtree is read (not the optimizer state).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  step = resolve_step(model_dir, checkpoint)
  path = (pathlib.Path(model_dir) / f"{ckpt.STEP_PREFIX}_{step}" / "state").absolute()
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


def local_absolute(path: PathLike) -> str:
  """An absolute path for local files (orbax refuses relative ones); URLs as is."""
  text = str(path)
  return text if "://" in text else str(pathlib.Path(text).absolute())


def frozen_params(initial_checkpoint_path: Optional[str], what: str = "the run"
                  ) -> Tuple[Any, Dict[str, np.ndarray]]:
  """(T5Config, {path: array}) of a frozen model checkpoint (any format)."""
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  if not initial_checkpoint_path:
    raise ValueError(f"{what} started from a randomly initialized model "
                     "(INITIAL_CHECKPOINT_PATH = None), which was never saved: the "
                     "frozen parameters cannot be reconstructed.")
  config, tree = checkpoints.load(local_absolute(initial_checkpoint_path),
                                  weights_only=True)
  return config, flatten(tree)


def full_params(model_dir: PathLike, checkpoint: Checkpoint = "latest"
                ) -> Tuple[Any, Dict[str, np.ndarray]]:
  """The whole trained model: the recorded frozen checkpoint, trained params on top.

  Returns:
    (T5Config from config.json, {path: array}).
  """
  from prompt_tuning.models.config import T5Config  # pylint: disable=g-import-not-at-top
  rec = record(model_dir)
  trained = trained_params(model_dir, checkpoint)
  method = rec.get("method")
  if method == "model":
    frozen = {}
  else:
    _, frozen = frozen_params(rec.get("initial_checkpoint_path"), str(model_dir))
  return T5Config.from_dict(rec["model_config"]), {**frozen, **trained}


def export_model(model_dir: PathLike, checkpoint: Checkpoint = "latest",
                 output: Optional[PathLike] = None) -> pathlib.Path:
  """Writes a model-tuned run's weights as a native checkpoint (reused if present).

  Model tuning exports no `.npy` (the whole model is the orbax state); this makes it
  a frozen-model checkpoint that `prompt_tuning.eval` / `infer` load through
  INITIAL_CHECKPOINT_PATH, evaluated with `methods/prompt_design.gin`.

  Returns:
    The checkpoint directory (default `MODEL_DIR/model_export_<step>`).
  """
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import unflatten  # pylint: disable=g-import-not-at-top
  rec = record(model_dir)
  if rec.get("method") != "model":
    raise ValueError(f"{model_dir} was trained with method {rec.get('method')!r}; "
                     "export_model is for model tuning (its prompt or prefix export "
                     "is under best/ and numpy_checkpoints/).")
  step = resolve_step(model_dir, checkpoint)
  out = pathlib.Path(output or pathlib.Path(model_dir) /
                     f"{EXPORTED_MODEL_PREFIX}_{step}").absolute()  # orbax needs it
  if (out / "config.json").is_file() and (out / "params").is_dir():
    return out
  config, params = full_params(model_dir, step)
  checkpoints.save(str(out), unflatten(params), config, overwrite=True)
  return out


def exported_arrays(model_dir: PathLike, checkpoint: Checkpoint = "best"
                    ) -> Dict[str, np.ndarray]:
  """The `.npy` export of a run: best/, the latest or a step's numpy checkpoint."""
  from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
  return ckpt.read_arrays(str(eval_lib.export_dir(str(model_dir), checkpoint)))


def prompt_of(source: PathLike, checkpoint: Checkpoint = "best") -> np.ndarray:
  """The `[P, H]` prompt of: a `.npy` file, a directory of exports (best/,
  numpy_checkpoints/checkpoint_<step>/), a PEFT adapter directory, or a MODEL_DIR
  (its `checkpoint` export, else its orbax state)."""
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"Prompt source {path} does not exist.")
  if path.is_file():
    prompt = np.load(path)
  elif is_model_dir(path):
    rec = record(path)
    if rec.get("method") not in ("prompt", "lopa"):
      raise ValueError(f"{path} was trained with method {rec.get('method')!r}, which "
                       "has no encoder prompt to extract.")
    try:
      prompt = exported_arrays(path, checkpoint)[PROMPT_EXPORT]
    except (FileNotFoundError, KeyError):
      prompt = trained_params(path, checkpoint)["encoder/prompt/prompt"]
  elif (path / f"{PROMPT_EXPORT}.npy").is_file():
    prompt = np.load(path / f"{PROMPT_EXPORT}.npy")
  else:
    from prompt_tuning import prompt_files  # pylint: disable=g-import-not-at-top
    if not (path / prompt_files.ADAPTER_CONFIG).is_file():
      raise FileNotFoundError(f"{path} holds no prompt: expected {PROMPT_EXPORT}.npy, "
                              f"a PEFT {prompt_files.ADAPTER_CONFIG} or a MODEL_DIR.")
    prompt = prompt_files.load_peft(path)
  prompt = np.asarray(prompt, np.float32)
  if prompt.ndim != 2:
    raise ValueError(f"{source}: a prompt is [P, H]; found shape {list(prompt.shape)}.")
  return prompt
