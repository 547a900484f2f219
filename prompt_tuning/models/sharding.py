"""Logical axis names → mesh axes, for parameters and activations alike.

The one rule table lives in `prompt_tuning.partitioning` (with the mesh); this file
holds only the resolution, so that the network can constrain its activations by
logical name without knowing about meshes, gin or the table:

  x = constrain(x, ("batch", "length", "embed"))   # x [B, T, H]

`constrain` is a no-op unless the caller traces the model inside
`activation_partitioning(mesh, rules)` (the trainer does), so tests and
single-device runs see the plain network.

Resolution follows T5X / flax: rules are tried in table order, each assigning its
mesh axis to the first array dimension with that logical name when the mesh axis is
still free in the array. A name may appear in several rules (T5X's 2-D tables give
`embed` first to `model`, then to `data`). A mesh axis that does not divide the
dimension is skipped, so e.g. 12 heads on an 8-way `model` axis stay replicated.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple, Union

import jax
from jax.sharding import NamedSharding, PartitionSpec

MeshAxes = Union[None, str, Tuple[str, ...]]
Rules = Sequence[Tuple[str, MeshAxes]]

_context = threading.local()


def resolve(names: Sequence[Optional[str]], shape: Sequence[int],
            mesh_shape: Mapping[str, int], rules: Rules) -> Tuple[MeshAxes, ...]:
  """Mesh axis per dimension (None = replicated) for logical `names` of `shape`."""
  out: list = [None] * len(names)
  assigned = [False] * len(names)
  used: set = set()
  for rule_name, axis in rules:
    if rule_name not in names:
      continue
    pos = list(names).index(rule_name)
    if assigned[pos]:
      continue
    if axis is None:  # an explicit "replicated" rule settles the dimension
      assigned[pos] = True
      continue
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    if used & set(axes) or any(a not in mesh_shape for a in axes):
      continue
    if shape[pos] % math.prod(mesh_shape[a] for a in axes):
      continue
    out[pos], assigned[pos] = axis, True
    used |= set(axes)
  return tuple(out)


@contextlib.contextmanager
def activation_partitioning(mesh: Any, rules: Rules) -> Iterator[None]:
  """Within this context, `constrain` shards activations on `mesh` by `rules`.

  Enter it around the tracing (the first call or `.lower`) of a jitted step.
  """
  previous = getattr(_context, "value", None)
  _context.value = (mesh, tuple(rules))
  try:
    yield
  finally:
    _context.value = previous


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """`x` with a sharding constraint from its logical `names` (no-op outside
  `activation_partitioning` or on a one-device mesh)."""
  value = getattr(_context, "value", None)
  if value is None:
    return x
  mesh, rules = value
  if mesh.size == 1:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of "
                     f"shape {x.shape}.")
  spec = PartitionSpec(*resolve(names, x.shape, dict(mesh.shape), rules))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
