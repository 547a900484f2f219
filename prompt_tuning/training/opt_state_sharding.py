"""Optimizer-state shardings derived from the trainable parameters' shardings.

The optimizer state is laid out explicitly, never left to XLA's propagation (which
may replicate a slot whose parameter is sharded, so that every step all-gathers
it, e.g. prefix tuning's Adam `mu`/`nu`):

  * a slot shaped like its parameter (Adam `mu` / `nu`, Adafactor's unfactored
    `v`, momentum) takes the parameter's sharding;
  * Adafactor's factored second moments drop one dimension of the parameter
    (`v_row` the largest, `v_col` the second largest, as optax's
    `scale_by_factored_rms` chooses them) and keep the mesh axes of the others;
  * everything else (step counters, injected hyperparameters, the `(1,)`
    placeholders of unfactored slots) is replicated.

A slot is tied to its parameter by its tree path: optax keeps parameter-shaped
subtrees, so the last keys of a slot's path are the parameter's path.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning.params import flatten

Params = Dict[str, Any]


def _keys(path) -> Tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _attribute(path) -> Optional[str]:
  """The last attribute name on the path (e.g. 'mu', 'v_row')."""
  names = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
  return names[-1] if names else None


def _full_spec(sharding: NamedSharding, ndim: int) -> Tuple[Any, ...]:
  spec = tuple(sharding.spec)
  return spec + (None,) * (ndim - len(spec))


def _factored_removed_dim(shape: Tuple[int, ...], slot: Optional[str]) -> Optional[int]:
  """The parameter dimension a factored Adafactor slot lacks (optax's choice)."""
  if len(shape) < 2 or slot not in ("v_row", "v_col"):
    return None
  sorted_dims = np.argsort(shape)  # the same call optax makes (factorized.py)
  largest, second = int(sorted_dims[-1]), int(sorted_dims[-2])
  return largest if slot == "v_row" else second


def _slot_sharding(leaf, path, params: Dict[str, Any],
                   shardings: Dict[str, NamedSharding],
                   replicated: NamedSharding) -> NamedSharding:
  shape = tuple(getattr(leaf, "shape", ()))
  if not shape:
    return replicated
  keys = _keys(path)
  owner = next(("/".join(keys[i:]) for i in range(len(keys))
                if "/".join(keys[i:]) in params), None)
  if owner is None:
    if int(np.prod(shape)) > 1:
      logging.info("Optimizer state %s %s belongs to no trainable parameter; "
                   "replicated.", jax.tree_util.keystr(path), shape)
    return replicated
  param_shape = tuple(params[owner].shape)
  sharding = shardings[owner]
  spec = _full_spec(sharding, len(param_shape))
  if shape == param_shape:
    return sharding
  removed = _factored_removed_dim(param_shape, _attribute(path))
  if removed is not None and shape == param_shape[:removed] + param_shape[removed + 1:]:
    return NamedSharding(sharding.mesh,
                         PartitionSpec(*(spec[:removed] + spec[removed + 1:])))
  return replicated


def opt_state_shardings(optimizer: optax.GradientTransformation, trainable: Params,
                        trainable_shardings: Params, mesh: Mesh) -> Any:
  """The tree of `NamedSharding`s of `optimizer.init(trainable)`.

  Args:
    optimizer: the optax transformation.
    trainable: the trainable parameters (arrays or `ShapeDtypeStruct`s).
    trainable_shardings: their `NamedSharding`s (same tree).
    mesh: the mesh (for replicated leaves).

  Returns:
    A tree with the structure of the optimizer state (see the module docstring).
  """
  abstract = jax.eval_shape(optimizer.init, trainable)
  params = flatten(trainable)
  shardings = flatten(trainable_shardings)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _slot_sharding(leaf, path, params, shardings, replicated),
      abstract)
