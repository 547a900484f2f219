"""The full parameter tree of a method on a frozen T5, placed on the mesh.

Shared by the entry points (train, eval, infer):

  config, params, shardings = build_params(method, model_config,
                                           initial_checkpoint_path, rng, mesh=mesh)

1. the frozen model comes from `INITIAL_CHECKPOINT_PATH` (T5X, Hugging Face or native,
   via `prompt_tuning.checkpoints`), or is randomly initialized when the path is
   None (tests, tiny-model pretraining); with a mesh, each process reads only the
   slices of each tensor that its devices hold (`checkpoints.load_sharded`);
2. the method's own parameters (e.g. `encoder/prompt/prompt`) are initialized by the
   model's initializers, computing only those (the rest of `init` is pruned by XLA);
3. `Method.initialize` runs (e.g. prompt from class labels or from a `.npy` file);
4. every leaf is placed with the sharding its logical axis names give on `mesh`.

The frozen parameters are cast to `T5Config.frozen_dtype` (e.g. bfloat16) as they
are loaded, leaf by leaf, so host memory holds them at that width too; the
trainable ones stay float32.

`apply_exported` puts trained `.npy` exports back into such a tree (eval / infer).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from prompt_tuning import checkpoints, host_memory, partitioning
from prompt_tuning.errors import UserError
from prompt_tuning.methods.base import Method
from prompt_tuning.models import families, scan
from prompt_tuning.params import flatten, unflatten
from prompt_tuning.models.config import T5Config

Params = Dict[str, Any]


def init_inputs(config: Optional[Any] = None) -> Tuple[jax.Array, ...]:
  """Dummy tokens for `init`: T5 `(encoder [1, 8], decoder [1, 4])`, a decoder-only
  model `(tokens [1, 8],)` (parameter shapes need no more)."""
  if config is not None and families.is_decoder_only(config):
    return (jnp.ones((1, 8), jnp.int32),)
  return jnp.ones((1, 8), jnp.int32), jnp.ones((1, 4), jnp.int32)


def abstract_params(model: nn.Module) -> Params:
  """`jax.eval_shape` of `model.init(...)['params']`, logical-axis boxes kept."""
  inputs = init_inputs(getattr(model, "config", None))
  return jax.eval_shape(lambda rng: model.init(rng, *inputs),
                        jax.random.PRNGKey(0))["params"]


def _init_subset(model: nn.Module, rng: jax.Array, paths) -> Dict[str, np.ndarray]:
  """Initializes only the parameters at `paths` (flat `/`-joined) as numpy arrays."""
  if not paths:
    return {}
  inputs = init_inputs(getattr(model, "config", None))
  wanted = tuple(sorted(paths))

  @jax.jit
  def init(rng):
    flat = flatten(nn.unbox(model.init(rng, *inputs)["params"]))
    return {p: flat[p] for p in wanted}

  return {p: np.asarray(v) for p, v in jax.device_get(init(rng)).items()}


def build_params(method: Method, model_config: T5Config,
                 initial_checkpoint_path: Optional[str], rng: jax.Array, *,
                 mesh: Optional[Mesh] = None,
                 axis_rules: Optional[partitioning.Rules] = None,
                 run_initializer: bool = True) -> Tuple[T5Config, Params, Optional[Params]]:
  """Frozen model + method parameters, initialized and (optionally) placed.

  Args:
    method: the tuning method (its modules and initializer).
    model_config: `MODEL_CONFIG`; sizes must match the checkpoint.
    initial_checkpoint_path: T5X / HF / native checkpoint, or None for random init.
    rng: initialization key.
    mesh: place every leaf with its logical-axis sharding when given.
    axis_rules: the rule table (default `partitioning.rules()`).
    run_initializer: run `method.initialize` (off when trained values follow).

  Returns:
    (config, params, shardings): the config actually used, the unboxed parameter
    tree (numpy arrays without a mesh, global `jax.Array`s with one) and the tree of
    `NamedSharding`s (None without a mesh).
  """
  init_rng, method_rng = jax.random.split(rng)
  config = model_config
  loaded: Dict[str, Any] = {}
  opened = None
  if initial_checkpoint_path:
    logging.info("Loading the frozen model from %s.", initial_checkpoint_path)
    opened = checkpoints.open_checkpoint(initial_checkpoint_path,
                                         config=model_config)
    config = opened.config
  model = method.build(config)
  abstract = abstract_params(model)
  expected = {p: leaf.value if isinstance(leaf, nn.Partitioned) else leaf
              for p, leaf in flatten(abstract).items()}
  shardings = None
  if mesh is not None:
    shardings = partitioning.param_shardings(
        abstract, mesh, axis_rules if axis_rules is not None else partitioning.rules())
  scanned = getattr(config, "scan_layers", False)
  if opened is not None and mesh is not None:
    # Each process reads only the shards its devices hold (checkpoints/sharded.py).
    wanted = flatten(shardings)
    loaded = checkpoints.load_sharded(
        opened, unstacked_shardings(wanted, config) if scanned else wanted)
  elif opened is not None:
    loaded = flatten(checkpoints.materialize(
        opened.location, opened.source, opened.config,
        describe_missing=opened.describe_missing))
  del opened
  cast_frozen(loaded, method, getattr(config, "frozen_dtype", jnp.float32))
  if scanned and loaded:
    loaded = stack_loaded(loaded, config,
                          flatten(shardings) if shardings is not None else None)
  missing = [p for p in expected if p not in loaded]
  if initial_checkpoint_path:
    logging.info("Initializing %d parameters not in the checkpoint: %s", len(missing),
                 ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""))
  flat = dict(loaded)
  flat.update(cast_frozen(_init_subset(model, init_rng, missing), method,
                          getattr(config, "frozen_dtype", jnp.float32)))
  params = unflatten({p: flat[p] for p in expected})
  if run_initializer and method.initialize is not None:
    params = method.initialize(method_rng, params, config)
    # An initializer reading a bfloat16 table (e.g. prompts from vocabulary
    # embeddings) must still leave float32 trainable parameters.
    params = flatten(params)
    for path in params:
      if method.is_trainable(path) and path in expected:
        params[path] = np.asarray(params[path], dtype=expected[path].dtype)
    params = unflatten(params)
  _check_shapes(params, expected)
  if mesh is None:
    return config, jax.tree_util.tree_map(np.asarray, params), None
  placed = place(params, shardings)
  del params, flat, loaded
  host_memory.release_freed()  # the host copies just freed (docs/BENCHMARKS.md)
  return config, placed, shardings


def _num_layers(config: T5Config) -> Dict[str, int]:
  return {"encoder": config.num_encoder_layers, "decoder": config.num_decoder_layers}


def unstacked_shardings(stacked: Mapping[str, Any], config: T5Config
                        ) -> Dict[str, Any]:
  """Shardings by checkpoint path for a scanned model's `{path: NamedSharding}`:
  layer i of `encoder/layers/x` (spec `(layers, *rest)`) gets `rest`."""
  out = {}
  for path, sharding in stacked.items():
    stack_name = path.split("/", 1)[0]
    if not path.startswith(f"{stack_name}/layers/") or stack_name not in scan.STACKS:
      out[path] = sharding
      continue
    rest = jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:])
    layer = jax.sharding.NamedSharding(sharding.mesh, rest)
    for i in range(_num_layers(config)[stack_name]):
      out[path.replace("/layers/", f"/layers_{i}/", 1)] = layer
  return out


def stack_loaded(flat: Dict[str, Any], config: T5Config,
                 shardings: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """Checkpoint layers (`encoder/layers_i/…`) stacked for `scan_layers`, on the
  devices with the stacked sharding when `shardings` are given (one tensor at a
  time, so the devices hold at most one extra stacked tensor)."""
  def stack_fn(arrays, path):
    if shardings is None:
      return np.stack([np.asarray(a) for a in arrays])
    return jax.jit(lambda *a: jnp.stack(a), out_shardings=shardings[path])(*arrays)
  return scan.stack(flat, _num_layers(config), stack_fn)


def cast_frozen(flat: Dict[str, Any], method: Method, dtype: Any) -> Dict[str, Any]:
  """Casts, in place, the frozen floating leaves of a flat tree to `dtype`.

  Works on numpy arrays and on `jax.ShapeDtypeStruct`s (the planner's abstract
  parameters); each float32 array is dropped as soon as its cast replaces it.
  Returns `flat`.
  """
  dtype = jnp.dtype(dtype)
  for path, value in flat.items():
    if method.is_trainable(path) or not jnp.issubdtype(value.dtype, jnp.floating) \
        or value.dtype == dtype:
      continue
    if isinstance(value, jax.ShapeDtypeStruct):
      flat[path] = jax.ShapeDtypeStruct(value.shape, dtype, sharding=value.sharding)
    elif isinstance(value, jax.Array):  # sharded reads: cast on the devices
      flat[path] = value.astype(dtype)
    else:
      flat[path] = np.asarray(value).astype(dtype)
  return flat


def _check_shapes(params: Params, expected: Mapping[str, Any]) -> None:
  flat = flatten(params)
  problems = [f"  {p}: expected {tuple(e.shape)}, found "
              f"{tuple(np.shape(flat[p])) if p in flat else 'nothing'}"
              for p, e in expected.items()
              if p not in flat or tuple(np.shape(flat[p])) != tuple(e.shape)]
  extra = sorted(set(flat) - set(expected))
  problems += [f"  {p}: not a parameter of the model" for p in extra]
  if problems:
    raise ValueError("The parameter tree does not match the model:\n" +
                     "\n".join(problems))


def place(params: Params, shardings: Params) -> Params:
  """Host arrays (identical on every process) → global arrays with `shardings`."""

  def put(value, sharding):
    if isinstance(value, jax.Array) and value.sharding == sharding:
      return value
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      # Computed from other processes' shards (e.g. a prompt taken from the
      # sharded embedding table): reshard on the devices, never via the host.
      return jax.jit(lambda x: x, out_shardings=sharding)(value)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree_util.tree_map(put, params, shardings)


class ExportMismatchError(UserError, ValueError):
  """A trained export does not fit the model/method it is loaded into."""


def apply_exported(params: Params, arrays: Mapping[str, np.ndarray],
                   source: str = "the export") -> Params:
  """Replaces parameters with exported `.npy` arrays named by dotted paths.

  `encoder.prompt.prompt` sets `encoder/prompt/prompt`; dtypes are cast to the
  parameter's. Errors name the file and the expected shape. Exports name layers
  as T5X does (`encoder.layers_3.…`); in a scanned model (`T5Config.scan_layers`)
  such an array sets that layer's slice of the stacked `encoder/layers/…`.
  """
  flat = flatten(params)
  for name, value in arrays.items():
    path = name.replace(".", "/")
    layer = None
    if path not in flat and scan.stacked_path(path) in flat:
      layer, path = scan.layer_index(path), scan.stacked_path(path)
    if path not in flat:
      raise ExportMismatchError(f"{source}: {name}.npy names parameter {path}, which the model "
                       f"does not have. Method parameters: "
                       f"{[p for p in flat if 'prompt' in p or 'prefix' in p][:20]}")
    current = flat[path]
    shape = tuple(np.shape(current))[1:] if layer is not None else tuple(np.shape(current))
    if shape != tuple(value.shape):
      raise ExportMismatchError(f"{source}: {name}.npy has shape {tuple(value.shape)}, expected "
                       f"{shape} for {name.replace('.', '/')}.")
    sharding = getattr(current, "sharding", None)
    value = np.asarray(value, dtype=current.dtype)
    if layer is not None:  # one layer of a stacked parameter
      whole = np.array(current)
      whole[layer] = value
      value = whole
    flat[path] = (jax.make_array_from_callback(value.shape, sharding,
                                               lambda idx, v=value: v[idx])
                  if isinstance(current, jax.Array) else value)
  return unflatten(flat)
