"""A training data stream that is a function of the global step only.

Every process iterates the same seeded stream of *global* batches (seqio with one
shard) and keeps the rows its devices hold, so global batch `n` contains the same
examples in the same order whatever the number of processes or the mesh, and a
run resumed on another process count continues the same stream (the checkpoint
records how many global batches were consumed). The price: every process reads
and tokenizes the whole global batch, which for prompt tuning's small datasets
and batches is cheap next to the model.
"""
from __future__ import annotations

from typing import Dict, Iterator

import numpy as np
from jax.sharding import Mesh

from prompt_tuning import partitioning

Batch = Dict[str, np.ndarray]


def process_rows(global_batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process's devices hold (`data` sharding).

  Raises:
    ValueError: the rows are not one contiguous block (a mesh whose `data` axis
      interleaves processes), which `make_array_from_process_local_data` could not
      assemble from one local slice.
  """
  sharding = partitioning.batch_sharding(mesh)
  boxes = sharding.addressable_devices_indices_map((global_batch_size,)).values()
  ranges = sorted({box[0].indices(global_batch_size)[:2] for box in boxes})
  start, stop = ranges[0][0], ranges[-1][1]
  covered = sum(b - a for a, b in ranges)
  if covered != stop - start:
    raise ValueError(f"This process holds rows {ranges} of the global batch, not one "
                     "contiguous block; use a mesh whose 'data' axis keeps each "
                     "process's devices together.")
  return slice(start, stop)


def rows_of(global_batches: Iterator[Batch], rows: slice) -> Iterator[Batch]:
  """This process's rows `[rows]` of every global batch."""
  for batch in global_batches:
    yield {name: value[rows] for name, value in batch.items()}
