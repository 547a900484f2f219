"""Exceptions raised while reading or writing model checkpoints.

All derive from `CheckpointError` (a `ValueError`), so callers can catch one type;
every message names the checkpoint path, what was expected and what was found.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

from prompt_tuning.errors import UserError


class CheckpointError(UserError, ValueError):
  """Base class: a checkpoint could not be read or written."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """The given path does not exist."""


class UnknownCheckpointFormatError(CheckpointError):
  """The path exists but matches none of the supported layouts."""


class ConfigMismatchError(CheckpointError):
  """A given `T5Config` disagrees with the sizes stored in the checkpoint.

  Attributes:
    mismatches: `(field, config_value, checkpoint_value)` for every disagreeing field.
  """

  def __init__(self, path: str, mismatches: Sequence[Tuple[str, object, object]],
               config_name: str = "T5Config"):
    self.mismatches = list(mismatches)
    lines = "\n".join(f"  {field}: config has {mine!r}, checkpoint has {theirs!r}"
                      for field, mine, theirs in self.mismatches)
    super().__init__(
        f"{config_name} is inconsistent with the checkpoint at {path}:\n{lines}\n"
        "Fix: pass config=None to take these sizes from the checkpoint, or bind the "
        f"{config_name} fields (e.g. the model preset in your gin file) to the "
        "checkpoint's values.")


class ParameterMismatchError(CheckpointError):
  """Tensors are missing from the checkpoint or have the wrong shape.

  Attributes:
    missing: `(parameter_path, expected_shape, where_it_was_looked_for)`.
    wrong_shape: `(parameter_path, expected_shape, found_shape, source)`.
  """

  def __init__(self, path: str, missing: Iterable[Tuple[str, tuple, str]],
               wrong_shape: Iterable[Tuple[str, tuple, tuple, str]]):
    self.missing = list(missing)
    self.wrong_shape = list(wrong_shape)
    parts = [f"Checkpoint at {path} does not fit the model:"]
    if self.missing:
      parts.append(f"{len(self.missing)} parameter(s) missing:")
      parts += [f"  {name}: expected shape {tuple(shape)}, not found"
                + (f" (looked for {where})" if where else "")
                for name, shape, where in self.missing]
    if self.wrong_shape:
      parts.append(f"{len(self.wrong_shape)} parameter(s) with the wrong shape:")
      parts += [f"  {name}: expected {tuple(want)}, found {tuple(got)}"
                + (f" (from {source})" if source else "")
                for name, want, got, source in self.wrong_shape]
    parts.append("Fix: check that the checkpoint and the T5Config describe the same "
                 "model size (see prompt_tuning.models.config.PRESETS).")
    super().__init__("\n".join(parts))


class T5XConfigRequiredError(CheckpointError):
  """A T5X checkpoint was loaded to build a model without the model's config."""

  def __init__(self, path: str):
    super().__init__(
        f"The T5X checkpoint {path} records no model config: its tensor shapes give "
        "the sizes, but not relative_attention_max_distance or layer_norm_epsilon. "
        "Fix: pass the model's T5Config (bind MODEL_CONFIG with the matching "
        "configs/models/*.gin, e.g. models/t5_1_1_base.gin, and "
        "--gin.t5_preset.relative_attention_max_distance=N if the model was not "
        "trained with 128).")


class MissingDependencyError(CheckpointError, ImportError):
  """An optional package needed for this checkpoint is not installed."""
