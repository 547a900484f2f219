"""What every checkpoint reader shares: the expected parameter tree, the config
check, and the streaming assembly of tensors into that tree.

A reader (`t5x.py`, `huggingface.py`, `native.py`) does not load arrays itself. It
describes the checkpoint as a `Source`: T5X parameter path → `LazyTensor`, a shape
plus a function that reads that one tensor. `materialize` then checks every shape
against the model *before* reading anything and reads tensors one at a time, so
errors come before any large read and memory holds the growing result plus a single
tensor in flight (see `materialize`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.checkpoints.errors import ConfigMismatchError, ParameterMismatchError
from prompt_tuning.models import families
from prompt_tuning.models.config import T5Config

Params = Dict[str, Any]  # nested dict of float32 numpy arrays, T5X layout
Shape = Tuple[int, ...]

# T5Config fields that describe the stored weights' architecture. A config given by
# the caller must agree with the checkpoint on every one of these that the format
# records; the others (dropout_rate, dtype) are run-time choices.
ARCHITECTURE_FIELDS = (
    "vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim", "num_encoder_layers",
    "num_decoder_layers", "relative_attention_num_buckets",
    "relative_attention_max_distance", "layer_norm_epsilon")


Index = Tuple[slice, ...]  # one box of a tensor, as jax hands to array callbacks


@dataclasses.dataclass
class LazyTensor:
  """One tensor of a checkpoint, not yet read.

  Attributes:
    shape: the shape `read()` returns (after any transposition).
    read: reads the tensor; returns an array of `shape` in any float dtype.
    source: human-readable origin for error messages (file and tensor name).
    read_slice: reads only `tensor[index]` (`index`: one slice per dimension, step
      1, bounds already resolved by `normalize_index`) from storage; None when the
      format can only read whole tensors (`read_region` then slices a full read).
  """
  shape: Shape
  read: Callable[[], np.ndarray]
  source: str = ""
  read_slice: Optional[Callable[[Index], np.ndarray]] = None


class ReadCounter:
  """Bytes of tensor data each reader took from storage in this process.

  Readers add what they fetch: safetensors the bytes read from the file, zarr the
  decompressed bytes of every chunk a read touches (tensorstore reads whole
  chunks), whole-tensor readers the tensor's size. Tests use it to check that a
  process reads only its share of a sharded model.
  """
  bytes = 0

  @classmethod
  def add(cls, count: int) -> None:
    cls.bytes += int(count)

  @classmethod
  def reset(cls) -> int:
    count, cls.bytes = cls.bytes, 0
    return count


def normalize_index(index: Sequence[Any], shape: Shape) -> Index:
  """`index` (slices with None bounds, as from `make_array_from_callback`, possibly
  shorter than `shape`) → one `slice(start, stop)` per dimension."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  out = []
  for item, size in zip(index, shape):
    start, stop, step = item.indices(size)
    if step != 1:
      raise ValueError(f"Strided slice {item} is not a shard of a tensor.")
    out.append(slice(start, stop))
  return tuple(out)


def chunk_bytes(store, index: Index) -> int:
  """Decompressed bytes of the chunks a tensorstore read of `index` touches (zarr
  reads whole chunks): what `ReadCounter` counts for T5X and native slice reads."""
  chunk = store.chunk_layout.read_chunk.shape or store.shape
  elements = 1
  for box, size, step in zip(index, store.shape, chunk):
    first, last = box.start // step, -(-box.stop // step)
    elements *= min((last - first) * step, size) if box.stop > box.start else 0
  return elements * store.dtype.numpy_dtype.itemsize


def read_region(tensor: LazyTensor, index: Index) -> np.ndarray:
  """`tensor[index]`, reading only that region when the format allows it."""
  index = normalize_index(index, tensor.shape)
  if tensor.read_slice is not None:
    return tensor.read_slice(index)
  whole = tensor.read()
  ReadCounter.add(whole.nbytes)
  return whole[index]


Source = Dict[str, LazyTensor]  # '/'-joined T5X parameter path → tensor


@functools.lru_cache(maxsize=16)
def expected_shapes(config: families.ModelConfig) -> Dict[str, Shape]:
  """`{path: shape}` of the frozen network's `init(...)['params']` (T5 or a
  decoder-only family, see `models.families`), computed abstractly
  (`jax.eval_shape`, no memory), in sorted path order. Checkpoints hold the
  unstacked layer paths (`encoder/layers_i/…`) whatever `scan_layers` says."""
  if getattr(config, "scan_layers", False):
    config = config.replace(scan_layers=False)
  model = families.build(config.replace(dtype=jnp.float32))
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *families.init_inputs(config))[
          "params"])
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(
              nn.unbox(abstract))[0]}
  return dict(sorted(flat.items()))


def resolve_config(path: str, found: Mapping[str, Any],
                   config: Optional[T5Config],
                   runtime: Optional[Mapping[str, Any]] = None,
                   config_class: type = T5Config) -> T5Config:
  """The config to build the model with.

  Args:
    path: the checkpoint, for messages.
    found: architecture fields the checkpoint records or implies.
    config: the caller's config, or None.
    runtime: non-architecture defaults recorded by the checkpoint (e.g. the Hugging
      Face `dropout_rate`); used only when `config` is None.

    config_class: the family's config dataclass (`T5Config`, `LlamaConfig`, …).

  Returns:
    `config` itself when it agrees with `found`; with no config, `config_class`
    defaults overridden by `runtime` and `found`.

  Raises:
    ConfigMismatchError: listing every field where `config` and `found` differ.
  """
  if config is None:
    return config_class(**{**dict(runtime or {}), **dict(found)})
  if not isinstance(config, config_class):
    raise ConfigMismatchError(path, [("model family", type(config).__name__,
                                      config_class.__name__)])
  mismatches = [(field, getattr(config, field), value)
                for field, value in found.items() if getattr(config, field) != value]
  if mismatches:
    raise ConfigMismatchError(path, mismatches)
  return config


def _set(tree: Params, path: str, value: np.ndarray) -> None:
  *parents, leaf = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


def check_source(path: str, source: Source, config: T5Config,
                 describe_missing: Optional[Callable[[str], str]] = None
                 ) -> Dict[str, Shape]:
  """Every tensor of `config`'s model is in `source` with its shape (nothing read).

  Returns:
    `expected_shapes(config)`.

  Raises:
    ParameterMismatchError: listing every missing tensor and every wrong shape.
  """
  expected = expected_shapes(config)
  missing = [(name, shape, describe_missing(name) if describe_missing else "")
             for name, shape in expected.items() if name not in source]
  wrong = [(name, shape, tuple(source[name].shape), source[name].source)
           for name, shape in expected.items()
           if name in source and tuple(source[name].shape) != shape]
  if missing or wrong:
    raise ParameterMismatchError(path, missing, wrong)
  unexpected = [name for name in source if name not in expected]
  if unexpected:
    logging.warning("Checkpoint %s: ignoring %d tensor(s) that are not parameters of "
                    "the T5.1.1 model: %s", path, len(unexpected), sorted(unexpected))
  return expected


def materialize(path: str, source: Source, config: T5Config,
                describe_missing: Optional[Callable[[str], str]] = None) -> Params:
  """Checks `source` against `config`'s parameter tree, then reads it tensor by tensor.

  Memory: tensors are read in path order; each is converted to a C-contiguous
  float32 array, placed into the result, and its `LazyTensor` is dropped from
  `source` (so the reader's buffer for it can be freed) before the next one is
  read. Peak memory is therefore the final parameters plus one tensor in flight
  (two when a dtype conversion or transposition needs a copy), never two copies of
  the model. `tests/test_checkpoints_common.py` measures this with tracemalloc.

  Args:
    path: the checkpoint, for messages.
    source: the reader's description; consumed (entries are popped) as it is read.
    config: the model the parameters are for.
    describe_missing: maps a missing parameter path to where the reader looked
      for it (e.g. the Hugging Face tensor name), for the error message.

  Returns:
    The nested parameter dict, exactly the tree of `Transformer(config).init`.

  Raises:
    ParameterMismatchError: listing every missing tensor and every wrong shape.
  """
  expected = check_source(path, source, config, describe_missing)
  params: Params = {}
  for name, shape in expected.items():
    tensor = source.pop(name)
    raw = tensor.read()
    ReadCounter.add(raw.nbytes)
    array = np.ascontiguousarray(raw, dtype=np.float32)
    del tensor, raw
    if array.shape != shape:  # the reader's declared shape was wrong
      raise ParameterMismatchError(path, [], [(name, shape, array.shape, "data")])
    _set(params, name, array)
    del array
  return params
