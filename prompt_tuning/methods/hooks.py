"""Helpers for methods that enter through the `adapter` hook of `Transformer`.

The hook is a Flax method interceptor (see `prompt_tuning/models/t5.py`): it is
called as `hook(next_fun, args, kwargs, context, deterministic=...)` for every
module method that runs inside the encoder and decoder. A method picks the calls
it adapts by module type and by the module's path, e.g. the frozen `Dense` at
`encoder/layers_0/attention/query`, and creates its parameters on that module, so
they live beside the frozen kernel (`…/query/lora_a`) and follow it through
layer scans and remat.
"""
from __future__ import annotations

import re
from typing import Any, Sequence, Tuple

import flax.linen as nn

from prompt_tuning.params import flatten
from prompt_tuning.models.layers import Dense


def module_path(module: nn.Module) -> str:
  """The `/`-joined parameter path of a bound module (`encoder/layers_0/mlp/wo`)."""
  return "/".join(str(name) for name in module.path)


def targeted_dense(context: Any, targets: Sequence[str]) -> bool:
  """True for a call of a frozen projection whose path fully matches a target regex:
  T5's `Dense`, the decoder-only `Linear`, GPT-2's fused `c_attn` (any module with
  `kernel_axes`: input axis first, then the output axes)."""
  module = context.module
  adaptable = isinstance(module, Dense) or getattr(module, "kernel_axes", None)
  return (bool(adaptable) and context.method_name == "__call__" and
          any(re.fullmatch(t, module_path(module)) for t in targets))


def check_targets(targets: Sequence[str], name: str) -> Tuple[str, ...]:
  """Compiles each regex once so that a typo fails at construction, not in a trace."""
  targets = tuple(targets)
  if not targets:
    raise ValueError(f"{name} needs at least one target regex (a Dense module path "
                     "such as '.*attention/query').")
  for target in targets:
    try:
      re.compile(target)
    except re.error as e:
      raise ValueError(f"{name}: target {target!r} is not a regex: {e}.") from e
    if target.endswith("kernel"):
      raise ValueError(f"{name}: target {target!r} names a kernel; targets match "
                       "module paths, e.g. '.*attention/query' (no '/kernel').")
  return targets


def kernel_paths(params, suffix: str):
  """`{module path: kernel path}` for every module that has a `suffix` parameter."""
  flat = flatten(params)
  out = {}
  for path in flat:
    if path.endswith("/" + suffix):
      module = path[: -len(suffix) - 1]
      out[module] = module + "/kernel"
  return out
