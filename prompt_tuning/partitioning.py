"""Device mesh, the one logical-axis rule table, and multi-host start-up.

Every parameter of the model carries logical axis names (`('embed', 'mlp')`, …, see
`prompt_tuning/models/layers.py`). `LOGICAL_AXIS_RULES` maps each name to a mesh
axis of a 2-D `jax.sharding.Mesh` with axes `('data', 'model')`:

  * `batch` → `data`: each data-parallel group sees a slice of the batch;
  * `vocab`, `mlp`, `heads`, `joined_kv` → `model`: model (tensor) parallelism, so a
    frozen xl / xxl model can be spread over the `model` axis (T5X's default rules);
  * `embed`, `prompt`, `prompts`, and the remaining names → replicated.

The same table shards activations: the network constrains its activations by
logical name (`models/sharding.constrain`: the residual stream `[batch, length,
embed]`, attention `[batch, length, heads, kv]`, MLP `[batch, length, mlp]`, logits
`[batch, length, vocab]`) inside `activation_partitioning(mesh, rules)`. T5X's 2-D
tables (`standard_rules(activation_partitioning_dims=2, parameter_partitioning_dims=2)`,
gin `partitioning.rules.activation_partitioning_dims = 2`) also shard `embed`: the
residual stream over `model`, the kernels' `embed` side over `data`.

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

from prompt_tuning.models import sharding
from prompt_tuning.params import flatten, unflatten

MeshAxes = Union[None, str, Tuple[str, ...]]
Rules = Sequence[Tuple[str, MeshAxes]]

DATA = "data"
MODEL = "model"

# T5X's rules for the network's own names (`t5x.partitioning.standard_logical_axis_rules`),
# by (activation_partitioning_dims, parameter_partitioning_dims). Rules are tried in
# order (see `models/sharding.py`), so in the 2-D tables `embed` only gets `model` or
# `data` where no earlier rule (`mlp`, `heads`, `vocab`, `batch`) took that axis
# already in the same array: e.g. activations [batch, length, embed] → (data, None,
# model) with 2-D activations, kernels [embed, mlp] → (data, model) with 2-D params.
_STANDARD = (("batch", DATA), ("vocab", MODEL), ("mlp", MODEL), ("heads", MODEL),
             ("kv", None), ("joined_kv", MODEL))
_EMBED_RULES = {
    (1, 1): (("embed", None),),
    (2, 1): (("embed", MODEL),),
    (1, 2): (("embed", DATA),),
    (2, 2): (("embed", MODEL), ("embed", DATA)),
}
# Names that are always replicated: positions, prompts, layer stacks, decoder-only
# models' GPT-2 fused q/k/v axis and learned position table, and the small
# method-owned axes (prefix reparametrization MLP, LoPA heads, LoRA rank).
_REPLICATED = ("relpos_buckets", "length", "prompt", "prompts", "prefix", "layers",
               "head_dim", "qkv", "positions", "rank", "prefix_embed", "prefix_mlp",
               "kv_pair", "lopa_hidden", "lopa_out", "lora_rank")


def standard_rules(activation_partitioning_dims: int = 1,
                   parameter_partitioning_dims: int = 1
                   ) -> Tuple[Tuple[str, MeshAxes], ...]:
  """T5X's 1-D / 2-D rule tables (`ACTIVATION_PARTITIONING_DIMS`,
  `PARAMETER_PARTITIONING_DIMS`) plus this project's replicated names."""
  key = (activation_partitioning_dims, parameter_partitioning_dims)
  if key not in _EMBED_RULES:
    raise ValueError(f"activation_partitioning_dims={key[0]} and "
                     f"parameter_partitioning_dims={key[1]}: each must be 1 or 2.")
  return _STANDARD + _EMBED_RULES[key] + tuple((n, None) for n in _REPLICATED)


# The one rule table (1-D, T5X's default): logical axis name → mesh axis (None =
# replicated).
LOGICAL_AXIS_RULES: Tuple[Tuple[str, MeshAxes], ...] = standard_rules(1, 1)

_warned_names = set()


def rules(overrides: Rules = (), table: Optional[Rules] = None,
          activation_partitioning_dims: int = 1,
          parameter_partitioning_dims: int = 1) -> Tuple[Tuple[str, MeshAxes], ...]:
  """The rule table with `overrides` applied first (they replace every rule of the
  names they mention).

  `table` defaults to `standard_rules(activation_partitioning_dims,
  parameter_partitioning_dims)`. Gin: `partitioning.rules.overrides =
  [('embed', 'model')]`, `partitioning.rules.activation_partitioning_dims = 2`.
  """
  base = tuple(table if table is not None else standard_rules(
      activation_partitioning_dims, parameter_partitioning_dims))
  names = {name for name, _ in overrides}
  return tuple((n, a) for n, a in overrides) + tuple(
      (n, a) for n, a in base if n not in names)


# ------------------------------------------------------------------------------------
# Mesh.
# ------------------------------------------------------------------------------------


def make_mesh(model_parallel: int = 1, devices: Optional[Sequence[Any]] = None, *,
              model_parallel_submesh: Optional[Sequence[int]] = None,
              dcn_data_parallel: int = 1) -> Mesh:
  """A `(data, model)` mesh over all devices, laid out for the hardware.

  Args:
    model_parallel: size of the `model` axis (T5X's `num_partitions`); the `data`
      axis takes the remaining factor. `jax.experimental.mesh_utils` places the
      axes on the physical topology (TPU torus, GPU hosts).
    devices: defaults to `jax.devices()` (all hosts).
    model_parallel_submesh: T5X's option: the physical block of devices, one size
      per physical axis (TPU `(x, y, z, core)`; other devices have one axis, their
      order), that forms one model-parallel group; `model_parallel` is then its
      product. Use it to keep the `model` axis on the fastest links.
    dcn_data_parallel: slices (TPU pods) or processes (GPU hosts) joined over the
      data-center network: a multi-slice mesh whose `data` axis spans them
      (`mesh_utils.create_hybrid_device_mesh`), `model` staying within a slice.
  """
  devices = list(devices if devices is not None else jax.devices())
  if model_parallel_submesh is not None:
    submesh = tuple(int(n) for n in model_parallel_submesh)
    model_parallel = math.prod(submesh)
    grid = submesh_grid(devices, submesh)
    return Mesh(grid, (DATA, MODEL))
  if model_parallel < 1 or len(devices) % model_parallel:
    raise ValueError(
        f"model_parallel={model_parallel} must divide the {len(devices)} devices; set "
        "--gin.partitioning.make_mesh.model_parallel to a divisor.")
  shape = (len(devices) // model_parallel, model_parallel)
  if dcn_data_parallel > 1:
    if shape[0] % dcn_data_parallel:
      raise ValueError(
          f"dcn_data_parallel={dcn_data_parallel} must divide the data axis "
          f"({shape[0]} = {len(devices)} devices / model_parallel={model_parallel}); "
          "set --gin.partitioning.make_mesh.dcn_data_parallel to a divisor.")
    ici = (shape[0] // dcn_data_parallel, model_parallel)
    slices = {getattr(d, "slice_index", None) for d in devices}
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, (dcn_data_parallel, 1), devices=devices,
        process_is_granule=slices == {None} or len(slices) == 1)
    return Mesh(grid, (DATA, MODEL))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, (DATA, MODEL))


def submesh_grid(devices: Sequence[Any], submesh: Sequence[int]) -> np.ndarray:
  """Devices as a `[data, model]` array whose rows are `submesh` blocks.

  The devices are first arranged by their physical coordinates (TPU `coords` and
  `core_on_chip`; otherwise their order, one axis). Physical axis i of size g_i is
  split into g_i / s_i blocks of s_i; a model group is one block on every axis.
  """
  if all(hasattr(d, "coords") for d in devices):
    coords = np.array([tuple(d.coords) + (getattr(d, "core_on_chip", 0),)
                       for d in devices])
    coords -= coords.min(axis=0)
    physical = tuple(int(n) for n in coords.max(axis=0) + 1)
    grid = np.empty(physical, dtype=object)
    for device, c in zip(devices, coords):
      grid[tuple(c)] = device
  else:
    physical = (len(devices),)
    grid = np.empty(physical, dtype=object)
    grid[:] = list(devices)
  if len(submesh) != len(physical) or any(g % s for g, s in zip(physical, submesh)):
    raise ValueError(f"model_parallel_submesh={tuple(submesh)} must have one size per "
                     f"physical axis of the devices {physical}, each dividing it.")
  split = []
  for g, s in zip(physical, submesh):
    split += [g // s, s]
  blocks = grid.reshape(split)
  n = len(physical)
  order = [2 * i for i in range(n)] + [2 * i + 1 for i in range(n)]
  model = math.prod(submesh)
  return blocks.transpose(order).reshape(-1, model)


# ------------------------------------------------------------------------------------
# Logical names → shardings.
# ------------------------------------------------------------------------------------


def mesh_axes(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
              axis_rules: Rules, where: str = "") -> PartitionSpec:
  """Maps logical names of one array to a `PartitionSpec` on `mesh`.

  T5X's resolution (`models/sharding.resolve`): rules in table order, a mesh axis
  used once per array, an axis that does not divide its dimension skipped (logged).
  Unknown names are replicated (logged once).
  """
  known = {name for name, _ in axis_rules}
  for name in logical:
    if name is not None and name not in known and name not in _warned_names:
      _warned_names.add(name)
      logging.warning("Logical axis %r (%s) has no rule in the partitioning table; "
                      "it is replicated. Add ('%s', 'model' or None) to "
                      "partitioning.rules.overrides to choose.", name, where, name)
  spec = sharding.resolve(logical, shape, dict(mesh.shape), axis_rules)
  for name, size, axis in zip(logical, shape, spec):
    wanted = [a for n, a in axis_rules if n == name and a is not None]
    if axis is None and wanted and all(
        size % math.prod(mesh.shape[x] for x in ((a,) if isinstance(a, str) else a))
        for a in wanted):
      logging.info("%s: dimension %r of size %d is not divisible by mesh axes %s; "
                   "replicating it.", where, name, size, wanted)
  return PartitionSpec(*spec)



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


def activation_partitioning(mesh: Mesh, axis_rules: Optional[Rules] = None):
  """Context in which the model's activations are constrained by `axis_rules` on
  `mesh` (enter it around the tracing of a jitted step)."""
  return sharding.activation_partitioning(
      mesh, axis_rules if axis_rules is not None else rules())


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
