"""Model checkpoints in and out: T5X, Hugging Face and this project's own format.

  config, params = checkpoints.load(path, config=None)

`path` may be local or `gs://`. The format is detected (`detect_format`):

  t5x          a `checkpoint_<step>` directory with a `checkpoint` msgpack file, the
               file itself, or a model directory of `checkpoint_<step>/` (latest).
  huggingface  `config.json` + `model.safetensors` (or its sharded index, or
               `pytorch_model.bin`, which needs torch): T5 1.1, or a decoder-only
               GPT-2 / Llama / Mistral / Qwen2 / Phi-3 (`hf_decoder.py`) by the
               config's `model_type`.
  native       `config.json` + `params/` (orbax), written by `save`.

`params` is a nested dict of float32 numpy arrays with exactly the tree of
`models.families.build(config).init(...)['params']` (T5X paths for T5, Hugging
Face names for the decoder-only families; no prompt/prefix). With `config=None`
the config comes from the checkpoint; a T5X checkpoint stores none (sizes can be
inferred from shapes, the relative-attention max distance and norm epsilon
cannot), so loading one needs the model gin's config, except with
`weights_only=True` for callers that only read the arrays; a given config
must agree with the checkpoint's sizes or `ConfigMismatchError` lists each field.
Tensors are checked against the model before any large read and read one at a time
(`tree.materialize`).

On a mesh, each process reads only its devices' slices of each tensor:

  opened = checkpoints.open_checkpoint(path, config)   # metadata only
  arrays = checkpoints.load_sharded(opened, shardings)  # {path: global jax.Array}

(`checkpoints/sharded.py`; T5X and native zarr, safetensors and memory-mapped
`.bin` files read slices from storage.)
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from etils import epath
from jax.sharding import Sharding

from prompt_tuning.checkpoints import hf_decoder, huggingface, native, t5x
from prompt_tuning.checkpoints.errors import (CheckpointError, CheckpointNotFoundError,
                                              ConfigMismatchError,
                                              MissingDependencyError,
                                              ParameterMismatchError,
                                              T5XConfigRequiredError,
                                              UnknownCheckpointFormatError)
from prompt_tuning.checkpoints.huggingface import save_huggingface
from prompt_tuning.checkpoints.native import save
from prompt_tuning.checkpoints.sharded import read_sharded
from prompt_tuning.checkpoints.tree import (Params, ReadCounter, Source,
                                            expected_shapes, materialize,
                                            resolve_config)
from prompt_tuning.models.config import T5Config

__all__ = [
    "load", "open_checkpoint", "load_sharded", "Opened", "ReadCounter", "save",
    "save_huggingface", "detect_format", "expected_shapes",
    "CheckpointError", "CheckpointNotFoundError", "ConfigMismatchError",
    "MissingDependencyError", "ParameterMismatchError", "T5XConfigRequiredError",
    "UnknownCheckpointFormatError",
]

FORMATS = ("t5x", "huggingface", "native")

_EXPECTED_FILES = (
    "  t5x: a `checkpoint` msgpack file (in the directory, or in its "
    "`checkpoint_<step>/` subdirectories)\n"
    "  huggingface: `config.json` plus `model.safetensors`, "
    "`model.safetensors.index.json`, `pytorch_model.bin` or "
    "`pytorch_model.bin.index.json`\n"
    "  native: `config.json` plus an orbax checkpoint directory `params/` "
    "(written by prompt_tuning.checkpoints.save)")


def detect_format(path) -> str:
  """Returns 't5x', 'huggingface' or 'native' for the checkpoint at `path`.

  Raises:
    CheckpointNotFoundError: `path` does not exist.
    UnknownCheckpointFormatError: no format matches; says what each one expects.
  """
  path = epath.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"No checkpoint at {path}: the path does not exist.")
  if path.is_file():
    if path.name == t5x.MSGPACK_FILE:
      return "t5x"
    raise UnknownCheckpointFormatError(
        f"{path} is a file; pass the checkpoint directory. Tried formats "
        f"{', '.join(FORMATS)}, which expect:\n{_EXPECTED_FILES}")
  if t5x.is_checkpoint_dir(path):
    return "t5x"
  if huggingface.is_huggingface_dir(path):
    return "huggingface"
  if native.is_native_dir(path):
    return "native"
  if t5x.latest_step_dir(path) is not None:
    return "t5x"
  try:
    found = sorted(p.name for p in path.iterdir())
  except OSError:
    found = []
  shown = ", ".join(found[:20]) + (", …" if len(found) > 20 else "")
  hint = ""
  if "config.json" in found:
    hint = ("\n`config.json` is present but neither Hugging Face weights nor a "
            "native `params/` directory were found next to it.")
  raise UnknownCheckpointFormatError(
      f"Unrecognized checkpoint directory {path} (contains: {shown or 'nothing'}). "
      f"Tried formats {', '.join(FORMATS)}, which expect:\n{_EXPECTED_FILES}{hint}")


class Opened(NamedTuple):
  """A checkpoint described but not read (`open_checkpoint`)."""
  config: T5Config
  location: str
  source: Source
  describe_missing: Optional[Callable[[str], str]] = None


def open_checkpoint(path, config: Optional[T5Config] = None, *,
                    weights_only: bool = False) -> Opened:
  """Detects the format, resolves the config and describes every tensor.

  Reads only metadata (the T5X msgpack target, safetensors headers, orbax
  metadata); arguments and errors as `load`.
  """
  fmt = detect_format(path)
  path = epath.Path(path)
  if fmt == "t5x":
    checkpoint_dir, source = t5x.read_source(path)
    found = t5x.infer_config_fields(source)
    if config is None and not weights_only:
      raise T5XConfigRequiredError(str(checkpoint_dir))
    config = resolve_config(str(checkpoint_dir), found, config, runtime=None)
    return Opened(config, str(checkpoint_dir), source)
  if fmt == "huggingface":
    hf = huggingface.read_hf_config(path)
    if hf_decoder.is_decoder_config(hf):
      config_class, found, runtime = hf_decoder.config_fields(hf, path)
      config = resolve_config(str(path), found, config, runtime, config_class)
      source, describe = hf_decoder.read_source(path, config, hf)
      return Opened(config, str(path), source, describe)
    found, runtime = huggingface.config_fields(hf, path)
    config = resolve_config(str(path), found, config, runtime)
    source, describe = huggingface.read_source(path, config, hf)
    return Opened(config, str(path), source, describe)
  found, runtime = native.config_fields(native.read_config_dict(path), path)
  config = resolve_config(str(path), found, config, runtime)
  return Opened(config, str(path), native.read_source(path))


def load(path, config: Optional[T5Config] = None, *,
         weights_only: bool = False) -> Tuple[T5Config, Params]:
  """Loads a frozen T5.1.1 from a T5X, Hugging Face or native checkpoint.

  Args:
    path: checkpoint location (local or gs://), see the module docstring.
    config: the intended model config, or None to take it from the checkpoint.
      Its size fields must match the checkpoint; `dropout_rate`, `dtype` (and for
      T5X, which stores neither, `relative_attention_max_distance` and
      `layer_norm_epsilon`) are taken from it. A T5X checkpoint needs it (see
      `T5XConfigRequiredError`) unless `weights_only`.
    weights_only: the caller uses the arrays only (e.g. compares embeddings) and
      never builds a model from the returned config; for T5X without a config the
      fields a T5X checkpoint does not record are then `T5Config` defaults.

  Returns:
    (config, params): params is a nested dict of float32 numpy arrays in the
    layout of `Transformer(config).init(...)['params']`.

  Raises:
    CheckpointNotFoundError, UnknownCheckpointFormatError, ConfigMismatchError,
    T5XConfigRequiredError (T5X without `config`), t5x.DamagedChunkError (a zarr
    chunk missing or undecodable: names the tensor, chunk and file),
    ParameterMismatchError (every missing tensor / wrong shape, expected vs found),
    MissingDependencyError (a `.bin`-only directory without torch).
  """
  opened = open_checkpoint(path, config, weights_only=weights_only)
  return opened.config, materialize(opened.location, opened.source, opened.config,
                                    describe_missing=opened.describe_missing)


def load_sharded(opened: Opened, shardings: Mapping[str, Sharding]
                 ) -> Dict[str, Any]:
  """The frozen model as global arrays, this process reading only its shards.

  Args:
    opened: from `open_checkpoint`.
    shardings: `{'/'-joined parameter path: Sharding}` (extra paths are ignored).

  Returns:
    `{path: jax.Array}` (flat, float32); see `checkpoints/sharded.py`.
  """
  return read_sharded(opened.location, opened.source, opened.config, shardings,
                      describe_missing=opened.describe_missing)
