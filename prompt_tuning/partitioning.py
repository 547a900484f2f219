"""Device mesh, the one logical-axis rule table, and multi-host start-up.

Every parameter of the model carries logical axis names (`('embed', 'mlp')`, …, see
`prompt_tuning/models/layers.py`). `LOGICAL_AXIS_RULES` maps each name to a mesh
axis of a 2-D `jax.sharding.Mesh` with axes `('data', 'model')`:

  * `batch` → `data`: each data-parallel group sees a slice of the batch;
  * `vocab`, `mlp`, `heads`, `joined_kv` → `model`: model (tensor) parallelism, so a
    frozen xl / xxl model can be spread over the `model` axis (T5X's default rules);
  * `embed`, `prompt`, `prompts`, and the remaining names → replicated.

Override the table with gin (`partitioning.rules.overrides = [('embed', 'model')]`
or bind the whole table). A dimension whose size does not divide its mesh axis is
replicated instead (logged), so e.g. 12 heads on a 8-way `model` axis still run.

Multi-host: call `initialize_distributed(...)` before any other JAX call; every host
then feeds its own slice of the global batch (`host_batch_to_global`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning.params import flatten, unflatten

MeshAxes = Union[None, str, Tuple[str, ...]]
Rules = Sequence[Tuple[str, MeshAxes]]

DATA = "data"
MODEL = "model"

# The one rule table: logical axis name → mesh axis (None = replicated).
LOGICAL_AXIS_RULES: Tuple[Tuple[str, MeshAxes], ...] = (
    ("batch", DATA),
    ("vocab", MODEL),
    ("mlp", MODEL),
    ("heads", MODEL),
    ("joined_kv", MODEL),
    ("kv", None),
    ("embed", None),
    ("relpos_buckets", None),
    ("length", None),
    ("prompt", None),
    ("prompts", None),
    ("prefix", None),
    ("layers", None),
    ("head_dim", None),
    ("rank", None),
    # Method-owned names (prefix reparametrization MLP, LoPA heads): small, replicated.
    ("prefix_embed", None),
    ("prefix_mlp", None),
    ("kv_pair", None),
    ("lopa_hidden", None),
    ("lopa_out", None),
)

_warned_names = set()


def rules(overrides: Rules = (), table: Optional[Rules] = None) -> Tuple[Tuple[str, MeshAxes], ...]:
  """The rule table (`LOGICAL_AXIS_RULES` or `table`) with `overrides` applied first.

  Gin: `partitioning.rules.overrides = [('embed', 'model')]`.
  """
  base = tuple(table if table is not None else LOGICAL_AXIS_RULES)
  names = {name for name, _ in overrides}
  return tuple((n, a) for n, a in overrides) + tuple(
      (n, a) for n, a in base if n not in names)


# ------------------------------------------------------------------------------------
# Mesh.
# ------------------------------------------------------------------------------------


def make_mesh(model_parallel: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A `(data, model)` mesh over all devices with `model_parallel` devices per model.

  Args:
    model_parallel: size of the `model` axis (T5X's `num_partitions`); the `data`
      axis takes the remaining factor.
    devices: defaults to `jax.devices()` (all hosts).
  """
  devices = list(devices if devices is not None else jax.devices())
  if model_parallel < 1 or len(devices) % model_parallel:
    raise ValueError(
        f"model_parallel={model_parallel} must divide the {len(devices)} devices; set "
        "--gin.partitioning.make_mesh.model_parallel to a divisor.")
  shape = (len(devices) // model_parallel, model_parallel)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, (DATA, MODEL))


# ------------------------------------------------------------------------------------
# Logical names → shardings.
# ------------------------------------------------------------------------------------


def mesh_axes(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
              axis_rules: Rules, where: str = "") -> PartitionSpec:
  """Maps logical names of one array to a `PartitionSpec` on `mesh`.

  Unknown names are replicated (logged once); a mesh axis already used by an earlier
  dimension, or one that does not divide the dimension, leaves the dimension
  replicated.
  """
  table = dict(axis_rules)
  used, out = set(), []
  for name, size in zip(logical, shape):
    axis = None
    if name is not None:
      if name not in table:
        if name not in _warned_names:
          _warned_names.add(name)
          logging.warning("Logical axis %r (%s) has no rule in the partitioning table; "
                          "it is replicated. Add ('%s', 'model' or None) to "
                          "partitioning.rules.overrides to choose.", name, where, name)
      else:
        axis = table[name]
    if axis is not None:
      axes = (axis,) if isinstance(axis, str) else tuple(axis)
      ways = math.prod(mesh.shape[a] for a in axes)
      if used & set(axes) or size % ways:
        if size % ways:
          logging.info("%s: dimension %r of size %d is not divisible by mesh axis %s "
                       "(%d); replicating it.", where, name, size, axes, ways)
        axis = None
      else:
        used |= set(axes)
    out.append(axis)
  return PartitionSpec(*out)



def param_shardings(abstract_boxed: Any, mesh: Mesh, axis_rules: Rules) -> Any:
  """`NamedSharding` per parameter from `jax.eval_shape(model.init, …)['params']`.

  `abstract_boxed` keeps flax's `nn.Partitioned` boxes (do not unbox it first); every
  leaf must have logical names (a leaf without them is an error naming its path).
  """
  flat = flatten(abstract_boxed)
  out = {}
  for path, leaf in flat.items():
    if not isinstance(leaf, nn.Partitioned):
      raise ValueError(f"Parameter {path} has no logical axis names; create it with "
                       "nn.with_logical_partitioning (see models/layers.py:param).")
    shape = leaf.value.shape
    out[path] = NamedSharding(mesh, mesh_axes(leaf.names, shape, mesh, axis_rules,
                                              where=path))
  return unflatten(out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over `data`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA))


# ------------------------------------------------------------------------------------
# Host data → global arrays.
# ------------------------------------------------------------------------------------


def host_batch_to_global(batch: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """This host's rows of a batch → global arrays sharded over `data`.

  Each host passes its own `[B / num_hosts, …]` slice (hosts in `process_index`
  order make up the global batch).
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-host batch size, or explains which sizes are allowed."""
  data_ways = mesh.shape[DATA]
  hosts = jax.process_count()
  if global_batch_size % data_ways or global_batch_size % hosts:
    raise ValueError(
        f"The batch size {global_batch_size} must be divisible by the {data_ways}-way "
        f"data axis and the {hosts} hosts; change --gin.BATCH_SIZE or "
        "partitioning.make_mesh.model_parallel.")
  return global_batch_size // hosts


# ------------------------------------------------------------------------------------
# Multi-host start-up.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How to join a multi-process run (T5X-style flags; see `cli.py`).

  Attributes:
    enabled: call `jax.distributed.initialize` (TPU pods auto-detect the rest).
    coordinator_address: `host:port` of process 0 (GPU/CPU clusters).
    num_processes / process_id: this run's size and this process's rank.
    local_device_ids: devices of this process (GPU), default all visible.
  """
  enabled: bool = False
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Sequence[int]] = None


def initialize_distributed(config: DistributedConfig) -> None:
  """`jax.distributed.initialize` when asked; must run before any JAX computation.

  On CPU the collectives go through gloo (needed for the multi-process tests).
  """
  if not config.enabled:
    return
  platforms = os.environ.get("JAX_PLATFORMS", "") or str(
      jax.config.read("jax_platforms") or "")
  if "cpu" in platforms:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(coordinator_address=config.coordinator_address,
                num_processes=config.num_processes, process_id=config.process_id)
  if config.local_device_ids is not None:
    kwargs["local_device_ids"] = list(config.local_device_ids)
  jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
  logging.info("Joined a %d-process run as process %d (%d local / %d global devices).",
               jax.process_count(), jax.process_index(), jax.local_device_count(),
               jax.device_count())
