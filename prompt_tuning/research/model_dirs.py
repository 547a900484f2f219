"""A finished training MODEL_DIR as a whole model (readers of single files:
`prompt_tuning.run_dir.layout`; the trained parameters: `train_state.read_trainable`).

  frozen_params(path)                (T5Config, {path: array}) of a frozen checkpoint
  full_params(model_dir, step)       the frozen model it started from + the trained
                                     parameters: (T5Config, {path: array})
  export_model(model_dir, step)      a model-tuned MODEL_DIR → native checkpoint
                                     (what `prompt_tuning.eval` reads as
                                     INITIAL_CHECKPOINT_PATH)

Paths are `/`-joined T5X parameter paths (`encoder/prompt/prompt`).
"""
from __future__ import annotations

import pathlib
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from prompt_tuning import checkpoints
from prompt_tuning.tiny import assets
from prompt_tuning.models.config import T5Config
from prompt_tuning.params import flatten, unflatten
from prompt_tuning.run_dir import layout, train_state

PathLike = Union[str, pathlib.Path]
EXPORTED_MODEL_PREFIX = "model_export"


def local_absolute(path: PathLike) -> str:
  """An absolute path for local files (orbax refuses relative ones); URLs as is."""
  text = str(path)
  return text if "://" in text else str(pathlib.Path(text).absolute())


def frozen_params(initial_checkpoint_path: Optional[str], what: str = "the run"
                  ) -> Tuple[Any, Dict[str, np.ndarray]]:
  """(T5Config, {path: array}) of a frozen model checkpoint (any format)."""
  if not initial_checkpoint_path:
    raise ValueError(f"{what} started from a randomly initialized model "
                     "(INITIAL_CHECKPOINT_PATH = None), which was never saved: the "
                     "frozen parameters cannot be reconstructed.")
  path = local_absolute(assets.locate(initial_checkpoint_path))
  config, tree = checkpoints.load(path, weights_only=True)
  return config, flatten(tree)


def full_params(model_dir: PathLike, checkpoint: layout.Checkpoint = "latest"
                ) -> Tuple[Any, Dict[str, np.ndarray]]:
  """The whole trained model: the recorded frozen checkpoint, trained params on top.

  Returns:
    (T5Config from config.json, {path: array}).
  """
  rec = layout.read_record(model_dir)
  trained = train_state.read_trainable(model_dir, checkpoint)
  if rec.get("method") == "model":
    frozen = {}
  else:
    _, frozen = frozen_params(rec.get("initial_checkpoint_path"), str(model_dir))
  return T5Config.from_dict(rec["model_config"]), {**frozen, **trained}


def export_model(model_dir: PathLike, checkpoint: layout.Checkpoint = "latest",
                 output: Optional[PathLike] = None) -> pathlib.Path:
  """Writes a model-tuned run's weights as a native checkpoint (reused if present).

  Model tuning exports no `.npy` (the whole model is the orbax state); this makes it
  a frozen-model checkpoint that `prompt_tuning.eval` / `infer` load through
  INITIAL_CHECKPOINT_PATH, evaluated with `methods/prompt_design.gin`.

  Returns:
    The checkpoint directory (default `MODEL_DIR/model_export_<step>`).
  """
  rec = layout.read_record(model_dir)
  if rec.get("method") != "model":
    raise ValueError(f"{model_dir} was trained with method {rec.get('method')!r}; "
                     "export_model is for model tuning (its prompt or prefix export "
                     "is under best/ and numpy_checkpoints/).")
  step = layout.resolve_step(model_dir, checkpoint)
  out = pathlib.Path(output or pathlib.Path(model_dir) /
                     f"{EXPORTED_MODEL_PREFIX}_{step}").absolute()  # orbax needs it
  if (out / "config.json").is_file() and (out / "params").is_dir():
    return out
  config, params = full_params(model_dir, step)
  checkpoints.save(str(out), unflatten(params), config, overwrite=True)
  return out
