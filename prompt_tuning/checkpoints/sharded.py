"""Per-host reads of a frozen model: each process reads only what its devices hold.

  params = read_sharded(location, source, config, shardings)

For every tensor of the model, `jax.make_array_from_callback` asks this process
for the boxes (`index`, one slice per dimension) its local devices hold under the
tensor's `NamedSharding`; only those boxes are read from storage (zarr: the chunks
they overlap, via tensorstore; safetensors: offset reads of their bytes; see
`LazyTensor.read_slice`). A box held by several local devices (a replicated
dimension) is read once, and boxes that tile one larger box are read as one. So on
`n` processes a tensor sharded over a mesh axis spanning all of them costs each
process about `1/n` of its bytes (plus whole zarr chunks at the shard edges), and
host memory never holds the whole model. `tests/test_sharded_reads.py` counts the
bytes with `tree.ReadCounter`. Native (orbax) checkpoints read slices of their
zarr arrays in the OCDBT store with tensorstore, as T5X; PyTorch `.bin` files in
the zip format are memory-mapped, so slicing a tensor touches only the file pages
of the box. What cannot slice (a legacy non-zip `.bin`, an orbax layout without
OCDBT) falls back to a whole read sliced in memory, one tensor at a time, and
says so once when several processes share the model (each then reads all of it).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Sharding

from prompt_tuning.checkpoints.tree import (Index, LazyTensor, Shape, Source,
                                            check_source, normalize_index,
                                            read_region)
from prompt_tuning.models.config import T5Config


def _bounding_box(boxes) -> Optional[Index]:
  """The box spanning `boxes` when they tile it exactly (else None)."""
  lower = [min(b[d].start for b in boxes) for d in range(len(boxes[0]))]
  upper = [max(b[d].stop for b in boxes) for d in range(len(boxes[0]))]
  volume = lambda box: int(np.prod([b.stop - b.start for b in box]))
  span = tuple(slice(lo, hi) for lo, hi in zip(lower, upper))
  return span if volume(span) == sum(volume(b) for b in boxes) else None


def _global_array(tensor: LazyTensor, shape: Shape, sharding: Sharding) -> jax.Array:
  """One global array; this process reads its devices' boxes and nothing else.

  The distinct boxes of the local devices usually tile one box (a contiguous range
  of a sharded dimension): that box is read in one go, so storage chunks shared by
  neighbouring devices are fetched once. Otherwise each distinct box is read.
  """
  local = {tuple((b.start, b.stop) for b in normalize_index(index, shape))
           for index in sharding.addressable_devices_indices_map(shape).values()}
  boxes = [tuple(slice(*bounds) for bounds in key) for key in sorted(local)]
  span = _bounding_box(boxes) if boxes else None
  read: Dict[tuple, np.ndarray] = {}
  if span is not None:
    whole = np.ascontiguousarray(read_region(tensor, span), np.float32)
    for box in boxes:
      inner = tuple(slice(b.start - s.start, b.stop - s.start)
                    for b, s in zip(box, span))
      read[tuple((b.start, b.stop) for b in box)] = whole[inner]
  else:
    for box in boxes:
      read[tuple((b.start, b.stop) for b in box)] = np.ascontiguousarray(
          read_region(tensor, box), np.float32)

  def box_of(index) -> np.ndarray:
    return read[tuple((b.start, b.stop) for b in normalize_index(index, shape))]

  return jax.make_array_from_callback(shape, sharding, box_of)


def read_sharded(location: str, source: Source, config: T5Config,
                 shardings: Mapping[str, Sharding],
                 describe_missing: Optional[Callable[[str], str]] = None
                 ) -> Dict[str, jax.Array]:
  """Global float32 arrays of `config`'s frozen model, each process reading its boxes.

  Args:
    location: the checkpoint, for messages.
    source: the reader's description (consumed, like `tree.materialize`).
    config: the model the parameters are for.
    shardings: `{'/'-joined path: Sharding}` for (at least) every model parameter.
    describe_missing: see `tree.materialize`.

  Returns:
    `{path: jax.Array}` (flat), every array with its sharding from `shardings`.

  Raises:
    ParameterMismatchError: before anything is read, as `tree.materialize`.
  """
  expected = check_source(location, source, config, describe_missing)
  whole = [name for name in expected if source[name].read_slice is None]
  if whole and jax.process_count() > 1:
    logging.warning(
        "%s: %d of %d tensors can only be read whole (e.g. %s), so each of the %d "
        "processes reads them all. Convert the checkpoint to safetensors once: "
        "python -c \"from prompt_tuning import checkpoints as c; cfg, p = "
        "c.load('%s'); c.save_huggingface('OUT', p, cfg)\"", location, len(whole),
        len(expected), source[whole[0]].source, jax.process_count(), location)
  out = {}
  for name, shape in expected.items():
    out[name] = _global_array(source.pop(name), shape, shardings[name])
  return out
