"""This project's own model format: an orbax PyTree checkpoint plus the config.

  <dir>/config.json   `T5Config.to_dict()`
  <dir>/params/       orbax PyTree checkpoint of the T5X-layout parameter tree

Used for the bundled tiny model and for models exported by this project. Shapes are
checked against the config from orbax's metadata before any array is read.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

import jax
import numpy as np
from etils import epath

from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.tree import (ARCHITECTURE_FIELDS, LazyTensor, Params,
                                            ReadCounter, Source, chunk_bytes)
from prompt_tuning.models import scan
from prompt_tuning.models.config import T5Config
from prompt_tuning.params import flatten, unflatten

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA")


def is_native_dir(path: epath.Path) -> bool:
  params = path / PARAMS_DIR
  return (path / CONFIG_FILE).is_file() and params.is_dir() and any(
      (params / m).exists() for m in _ORBAX_MARKERS)


def read_config_dict(path: epath.Path) -> Dict[str, Any]:
  return json.loads((path / CONFIG_FILE).read_text())


def config_fields(values: Dict[str, Any], path) -> Tuple[Dict[str, Any],
                                                          Dict[str, Any]]:
  """(architecture fields, run-time fields) of the stored `T5Config`."""
  try:
    stored = T5Config.from_dict(values)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}/{CONFIG_FILE} is not a T5Config: {e}") from e
  found = {f: getattr(stored, f) for f in ARCHITECTURE_FIELDS}
  runtime = {"dropout_rate": stored.dropout_rate, "dtype": stored.dtype}
  return found, runtime


def _checkpointer():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp, ocp.PyTreeCheckpointer()


def _flatten(tree, prefix="") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def read_source(path) -> Source:
  """Describes the stored arrays by orbax metadata; reads them all on first access.

  Orbax restores a whole tree at once, so the first `read()` restores every array
  straight into numpy (one copy, written in place by tensorstore) and later reads
  hand those arrays out, dropping the restorer's reference to each: together with
  `tree.materialize` the parameters exist once in memory.
  """
  path = epath.Path(path)
  ocp, checkpointer = _checkpointer()
  params_dir = path / PARAMS_DIR
  metadata = checkpointer.metadata(params_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  shapes = {name: tuple(m.shape) for name, m in _flatten(tree).items()}
  restored: Dict[str, np.ndarray] = {}

  def restore_all():
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                  tree)
    restored.update(_flatten(checkpointer.restore(params_dir, restore_args=args)))

  def reader(name):
    def read():
      if not restored:
        restore_all()
      return restored.pop(name)
    return read

  slice_reader = _ocdbt_slice_reader(params_dir)
  return {name: LazyTensor(shape, reader(name), f"{params_dir}:{name}",
                           slice_reader(name) if slice_reader else None)
          for name, shape in shapes.items()}


def _ocdbt_slice_reader(params_dir: epath.Path):
  """`name -> read_slice` over the checkpoint's tensorstore arrays (zarr in an
  OCDBT store, orbax's default layout), or None for another layout (then a
  sharded read restores the whole tree)."""
  if not (params_dir / "manifest.ocdbt").exists():
    return None
  base = str(params_dir)
  base = base if "://" in base else "file://" + os.path.abspath(base)

  def for_name(name: str):
    key = name.replace("/", ".")

    def read_slice(index):
      import tensorstore as ts  # pylint: disable=g-import-not-at-top
      store = None
      for driver in ("zarr", "zarr3"):
        try:
          store = ts.open({"driver": driver, "kvstore": {
              "driver": "ocdbt", "base": base, "path": key}}, open=True,
                          read=True).result()
          break
        except ValueError:
          continue
      if store is None:
        raise CheckpointError(f"{params_dir}: cannot open tensor {key} with "
                              "tensorstore (zarr or zarr3 in OCDBT).")
      out = np.asarray(store[tuple(index)].read().result(), dtype=np.float32)
      ReadCounter.add(chunk_bytes(store, index))
      return out
    return read_slice
  return for_name


# Storage chunks of the arrays: per-host reads (`checkpoints/sharded.py`) fetch whole
# chunks, so a process reading its shard of a large tensor reads about its share.
CHUNK_BYTES = 16 * 2**20


def save(path, params: Params, config: T5Config, overwrite: bool = False,
         chunk_bytes: int = CHUNK_BYTES) -> epath.Path:
  """Writes `params` (T5X layout) and `config` as a native checkpoint directory.

  Args:
    path: the directory to create (local or any orbax-supported path).
    params: nested dict of arrays; saved as float32, a scanned model's stacked
      layers (`T5Config.scan_layers`) under the T5X layer paths.
    config: written to `config.json` with `T5Config.to_dict()`.
    overwrite: replace an existing checkpoint at `path`.
    chunk_bytes: largest storage chunk of an array (the unit of a slice read).

  Returns:
    The directory.
  """
  path = epath.Path(path)
  params_dir = path / PARAMS_DIR
  if params_dir.exists():
    if not overwrite:
      raise CheckpointError(f"{path} already holds a checkpoint; pass "
                            "overwrite=True to replace it.")
    params_dir.rmtree()
  path.mkdir(parents=True, exist_ok=True)
  ocp, checkpointer = _checkpointer()
  as_f32 = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float32),
                                  unflatten(scan.unstack(flatten(params))))
  save_args = jax.tree_util.tree_map(
      lambda _: ocp.SaveArgs(chunk_byte_size=chunk_bytes), as_f32)
  checkpointer.save(params_dir, as_f32, save_args=save_args)
  (path / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
  return path
