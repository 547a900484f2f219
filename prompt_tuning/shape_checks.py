"""Batch-shape checks that run before anything is loaded or compiled.

Each failure is one line naming the flag to change. The mesh itself is checked
where it is built (`partitioning.make_mesh`: `model_parallel` must divide the
device count).
"""
from __future__ import annotations

import math
from typing import Optional

from jax.sharding import Mesh

DATA = "data"  # the mesh's data-parallel axis (partitioning.DATA)


class ShapeError(ValueError):
  """A batch size does not fit the mesh, the processes or the microbatches."""


def _check_divisible(size: int, what: str, flag: str, data_ways: int,
                     processes: int) -> None:
  step = math.lcm(data_ways, processes)
  if size < 1 or size % step:
    raise ShapeError(
        f"{what} {size} must be a positive multiple of {step} (the {data_ways}-way "
        f"'data' mesh axis and {processes} process(es)); set {flag} to e.g. "
        f"{max(step, size // step * step or step)}.")


def check_train_shapes(batch_size: int, eval_batch_size: Optional[int],
                       num_microbatches: Optional[int], mesh: Mesh,
                       processes: int, evaluates: bool = True) -> int:
  """Checks the training shapes against the mesh; returns the per-process batch.

  Args:
    batch_size: the global training batch (`BATCH_SIZE`).
    eval_batch_size: `TrainConfig.eval_batch_size` (None: `batch_size`).
    num_microbatches: `NUM_MICROBATCHES` (None or 1: no split).
    mesh: the device mesh (its `data` axis splits every batch).
    processes: `jax.process_count()`.
    evaluates: whether the run evaluates (the eval batch is checked only then).

  Raises:
    ShapeError: naming the value, the constraint and the flag to change.
  """
  data_ways = int(mesh.shape[DATA])
  _check_divisible(batch_size, "BATCH_SIZE", "--gin.BATCH_SIZE", data_ways, processes)
  if evaluates:
    _check_divisible(eval_batch_size or batch_size,
                     "The eval batch size" if eval_batch_size else
                     "The eval batch size (BATCH_SIZE, as TrainConfig.eval_batch_size "
                     "is unset)", "--gin.TrainConfig.eval_batch_size", data_ways,
                     processes)
  if num_microbatches not in (None, 1):
    if not isinstance(num_microbatches, int) or num_microbatches < 1:
      raise ShapeError(f"NUM_MICROBATCHES must be a positive integer or None, got "
                       f"{num_microbatches!r}; set --gin.NUM_MICROBATCHES.")
    if batch_size % num_microbatches:
      raise ShapeError(f"NUM_MICROBATCHES={num_microbatches} does not divide "
                       f"BATCH_SIZE={batch_size}; set --gin.NUM_MICROBATCHES to a "
                       "divisor of the batch size.")
    rows = batch_size // num_microbatches
    if rows % data_ways:
      raise ShapeError(f"Each of the {num_microbatches} microbatches has {rows} rows, "
                       f"not a multiple of the {data_ways}-way 'data' mesh axis; set "
                       "--gin.NUM_MICROBATCHES so that BATCH_SIZE / NUM_MICROBATCHES "
                       f"is a multiple of {data_ways}.")
  return batch_size // processes
