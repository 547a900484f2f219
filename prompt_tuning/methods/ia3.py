"""IA3 (Liu et al., 2022): learned rescaling of keys, values and the MLP activation.

Three kinds of frozen `Dense` calls are adapted (all initialized to the identity):

  keys / values   y = (x W) * l        l [N*D], axes ('joined_kv',)
                  every attention's key and value projection (encoder self-,
                  decoder self- and cross-attention)
  MLP             y = (h * l) W_o      l [F], axes ('mlp',)
                  the gated intermediate activation `gelu(wi_0 x) * wi_1 x`
                  scaled before `wo` (the official code scales one factor of the
                  product; the same thing)

The scales live beside their kernels (`…/attention/key/ia3_scale`,
`…/mlp/wo/ia3_scale`) and shard with them. `merge` multiplies them into the
kernels (columns of key/value, rows of wo): a plain T5 tree with the same logits.
PEFT's IA3 for T5 uses exactly these modules (`k`, `v`, feed-forward `wo`).

On the decoder-only families the defaults are PEFT's as well: GPT-2's fused
`attn/c_attn` output (q, k and v: a `[3, H]` scale) and the input of `mlp/c_proj`;
Llama's `self_attn/{k_proj,v_proj}` outputs and the input of `mlp/down_proj`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.methods import hooks
from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, flatten, unflatten
from prompt_tuning.models.layers import param

OUTPUT_TARGETS = (r".*attention/(key|value)",  # T5
                  r".*/attn/c_attn",  # GPT-2
                  r".*/self_attn/(k_proj|v_proj)")  # Llama family
INPUT_TARGETS = (r".*/mlp/wo", r".*/mlp/c_proj", r".*/mlp/down_proj")
TRAINABLE = (r".*/ia3_scale",)


@dataclasses.dataclass(frozen=True)
class Ia3Hook:
  """The `adapter` hook: scales the outputs of `output_targets` and the inputs of
  `input_targets` by learned vectors initialized to ones."""
  output_targets: Tuple[str, ...] = OUTPUT_TARGETS
  input_targets: Tuple[str, ...] = INPUT_TARGETS
  supports_decoder_only = True

  def is_input_target(self, module_path: str) -> bool:
    return any(re.fullmatch(t, module_path) for t in self.input_targets)

  def __call__(self, next_fun, args, kwargs, context, *, deterministic: bool = True):
    del deterministic
    dense = context.module
    if hooks.targeted_dense(context, self.input_targets):
      x = args[0]  # [..., in]
      scale = param(dense, "ia3_scale", nn.initializers.ones, (x.shape[-1],),
                    (dense.kernel_axes[0],))
      return next_fun(x * scale.astype(x.dtype), *args[1:], **kwargs)
    if hooks.targeted_dense(context, self.output_targets):
      y = next_fun(*args, **kwargs)  # [..., *out]: one axis, or (3, H) for c_attn
      out_axes = tuple(dense.kernel_axes[1:])
      scale = param(dense, "ia3_scale", nn.initializers.ones,
                    y.shape[y.ndim - len(out_axes):], out_axes)
      return y * scale.astype(y.dtype)
    return next_fun(*args, **kwargs)


def merge(params: Params, input_targets: Sequence[str] = INPUT_TARGETS) -> Params:
  """Multiplies every `ia3_scale` into its kernel and drops it.

  A module matching `input_targets` scales the kernel's rows (its input), any
  other the kernel's columns (its output).
  """
  flat = dict(flatten(params))
  hook = Ia3Hook(input_targets=tuple(input_targets))
  for module, kernel in hooks.kernel_paths(params, "ia3_scale").items():
    scale = jnp.asarray(flat.pop(f"{module}/ia3_scale"), jnp.float32)
    w = flat[kernel]
    if hook.is_input_target(module):  # rows: [in] against [in, *out]
      merged = jnp.asarray(w, jnp.float32) * scale.reshape(
          (-1,) + (1,) * (w.ndim - 1))
    else:  # columns: [*out] against [in, *out]
      merged = jnp.asarray(w, jnp.float32) * scale[None]
    flat[kernel] = merged.astype(w.dtype)
  return unflatten(flat)


def ia3(output_targets: Sequence[str] = OUTPUT_TARGETS,
        input_targets: Sequence[str] = INPUT_TARGETS) -> Method:
  """IA3 of a frozen model: trains `…/ia3_scale` vectors (about 0.01% of T5 base).

  Args:
    output_targets: Dense module paths whose outputs are rescaled (default every
      attention's key and value).
    input_targets: Dense module paths whose inputs are rescaled (default each
      MLP's `wo`, i.e. the intermediate activation).
  """
  hook = Ia3Hook(hooks.check_targets(output_targets, "ia3"),
                 hooks.check_targets(input_targets, "ia3"))
  return Method(name="ia3", adapter=hook, trainable=TRAINABLE)


def merged(method: Method, params: Params) -> Params:
  """`merge` with the method's own targets."""
  if not isinstance(method.adapter, Ia3Hook):
    raise ValueError(f"Method {method.name!r} is not IA3.")
  return merge(params, method.adapter.input_targets)
