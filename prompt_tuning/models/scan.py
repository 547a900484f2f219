"""Layer stacks of a scanned T5 (`T5Config.scan_layers`) and the unstacked T5X layout.

With `scan_layers=True` the encoder and decoder run their layers with `nn.scan`, so
XLA compiles one layer per stack instead of L copies. The parameters of a stack
then live under one path with a leading `layers` axis (logical name `layers`):

  unstacked (T5X, Hugging Face, our exports)   scanned
  encoder/layers_0/mlp/wo/kernel [F, H]        encoder/layers/mlp/wo/kernel [L, F, H]
  …
  encoder/layers_{L-1}/mlp/wo/kernel [F, H]

Checkpoints and exports always use the unstacked paths; `stack` turns a flat
unstacked tree into the scanned one when a scanned model is built, `unstack` goes
back (saving a model, merges). Both work on numpy and on jax arrays, and leave
every other path (embeddings, norms, relpos tables, prompts, prefixes) alone.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

STACKS = ("encoder", "decoder")
_UNSTACKED = re.compile(r"^(encoder|decoder)/layers_(\d+)/(.+)$")
_STACKED = re.compile(r"^(encoder|decoder)/layers/(.+)$")


def is_stacked(flat: Mapping[str, Any]) -> bool:
  """True when `flat` (a `/`-joined tree) holds scanned `…/layers/…` parameters."""
  return any(_STACKED.match(path) for path in flat)


def stack(flat: Mapping[str, Any], num_layers: Mapping[str, int],
          stack_fn: Optional[Callable[[list, str], Any]] = None) -> Dict[str, Any]:
  """`encoder/layers_i/x` (i < L) → `encoder/layers/x` of shape `[L, …]`.

  Args:
    flat: unstacked parameters by `/`-joined path.
    num_layers: `{'encoder': L_enc, 'decoder': L_dec}`.
    stack_fn: `(per-layer arrays, stacked path) -> stacked array`; default
      `np.stack` (pass one that places the result on a mesh for sharded reads).

  Raises:
    ValueError: a layer of some stacked parameter is missing.
  """
  stack_fn = stack_fn or (lambda arrays, path: np.stack(arrays))
  out: Dict[str, Any] = {}
  groups: Dict[str, Dict[int, Any]] = {}
  for path, value in flat.items():
    match = _UNSTACKED.match(path)
    if match is None:
      out[path] = value
      continue
    name, layer, rest = match.group(1), int(match.group(2)), match.group(3)
    groups.setdefault(f"{name}/layers/{rest}", {})[layer] = value
  for path, layers in groups.items():
    count = num_layers[path.split("/", 1)[0]]
    missing = sorted(set(range(count)) - set(layers))
    extra = sorted(set(layers) - set(range(count)))
    if missing or extra:
      raise ValueError(f"Cannot stack {path} for scan_layers: layers {missing} "
                       f"missing, {extra} beyond the {count} of the model.")
    out[path] = stack_fn([layers[i] for i in range(count)], path)
  return out


def unstack(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """`encoder/layers/x [L, …]` → `encoder/layers_i/x [...]` for i < L (the T5X paths)."""
  out: Dict[str, Any] = {}
  for path, value in flat.items():
    match = _STACKED.match(path)
    if match is None:
      out[path] = value
      continue
    name, rest = match.group(1), match.group(2)
    for i in range(value.shape[0]):
      out[f"{name}/layers_{i}/{rest}"] = value[i]
  return out


def stacked_path(path: str) -> str:
  """The scanned path of an unstacked one (`encoder/layers_3/x` → `encoder/layers/x`)."""
  match = _UNSTACKED.match(path)
  return f"{match.group(1)}/layers/{match.group(3)}" if match else path


def layer_index(path: str) -> int:
  """The layer of an unstacked path (`encoder/layers_3/x` → 3)."""
  match = _UNSTACKED.match(path)
  if match is None:
    raise ValueError(f"{path} is not a layer parameter (encoder|decoder/layers_i/…).")
  return int(match.group(2))


def unscanned(config: Any) -> Any:
  """`config` with `scan_layers=False` (eval and infer: cached decoding needs the
  unscanned layers, and checkpoints and exports are layout-independent)."""
  if getattr(config, "scan_layers", False):
    return config.replace(scan_layers=False)
  return config
