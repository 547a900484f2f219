"""LoRA (Hu et al., 2021): low-rank updates of chosen frozen kernels.

A targeted `Dense` with frozen kernel W `[in, out]` computes

  y = x W + (alpha / r) · dropout(x) A B,    A [in, r],  B [r, out]

with A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default) and B = 0, so training starts
from the frozen model. The factors live beside their kernel
(`encoder/layers_0/attention/query/{lora_a,lora_b}`) with logical axes
`(<kernel's in axis>, 'lora_rank')` and `('lora_rank', <kernel's out axis>)`, so
with model parallelism B of a query kernel is split over heads like the kernel and
A of an output kernel likewise (`lora_rank` is replicated).

Targets are regexes over module paths; the default, the paper's setting, is every
attention's query and value projection (encoder self-, decoder self- and
cross-attention, as PEFT's `target_modules=['q', 'v']` for T5). On the decoder-only
families the defaults are PEFT's too: GPT-2's fused `attn/c_attn` (B is then
`[r, 3, H]`: q, k and v), Llama's `self_attn/{q_proj,v_proj}`; any of `c_attn`,
`c_proj`, `c_fc` / `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
`down_proj` can be targeted. `merge` folds the update into the kernels and gives a
plain parameter tree of the frozen model with the same logits.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.methods import hooks
from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, flatten, unflatten
from prompt_tuning.models.layers import Dropout, param

Array = jax.Array
DEFAULT_TARGETS = (r".*attention/(query|value)",  # T5
                   r".*/attn/c_attn",  # GPT-2 (q, k, v fused)
                   r".*/self_attn/(q_proj|v_proj)")  # Llama family
TRAINABLE = (r".*/lora_[ab]",)
RANK_AXIS = "lora_rank"


@dataclasses.dataclass(frozen=True)
class LoraHook:
  """The `adapter` hook: adds `(alpha/r) · dropout(x) A B` to targeted Dense calls."""
  targets: Tuple[str, ...]
  rank: int
  alpha: float
  dropout_rate: float = 0.0
  supports_decoder_only = True

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def __call__(self, next_fun, args, kwargs, context, *, deterministic: bool = True):
    if not hooks.targeted_dense(context, self.targets):
      return next_fun(*args, **kwargs)
    dense = context.module
    x = args[0]  # [..., in]
    y = next_fun(*args, **kwargs)  # [..., *out]: one axis, or (3, H) for c_attn
    in_axis, *out_axes = dense.kernel_axes
    out_shape = y.shape[y.ndim - len(out_axes):]
    bound = 1.0 / math.sqrt(x.shape[-1])
    a = param(dense, "lora_a",
              lambda rng, shape, dtype: jax.random.uniform(rng, shape, dtype, -bound,
                                                           bound),
              (x.shape[-1], self.rank), (in_axis, RANK_AXIS))
    b = param(dense, "lora_b", nn.initializers.zeros, (self.rank,) + out_shape,
              (RANK_AXIS,) + tuple(out_axes))
    h = Dropout(self.dropout_rate, name="lora_dropout")(x, deterministic=deterministic)
    dtype = dense.dtype
    delta = jnp.tensordot(jnp.dot(h.astype(dtype), a.astype(dtype)), b.astype(dtype),
                          axes=1)
    return y + (self.scale * delta).astype(y.dtype)


def merge(params: Params, scale: float) -> Params:
  """Folds every `lora_a`/`lora_b` pair into its kernel: W + scale · A B.

  Returns a tree without LoRA parameters (the frozen model's paths only), whose
  logits equal those of the adapted model.
  """
  flat = dict(flatten(params))
  for module, kernel in hooks.kernel_paths(params, "lora_a").items():
    a = flat.pop(f"{module}/lora_a")
    b = flat.pop(f"{module}/lora_b")
    w = flat[kernel]
    flat[kernel] = (jnp.asarray(w, jnp.float32) + scale * jnp.tensordot(
        jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), axes=1)
                    ).astype(w.dtype)
  return unflatten(flat)


def lora(rank: int = 8, alpha: float = 8.0, dropout_rate: float = 0.0,
         targets: Sequence[str] = DEFAULT_TARGETS) -> Method:
  """LoRA of a frozen model: trains `.../lora_a` `[in, r]` and `.../lora_b` `[r, out]`.

  Args:
    rank: r.
    alpha: the update is scaled by alpha / r (Hu et al. keep alpha fixed while
      varying r; PEFT's default is alpha = 8).
    dropout_rate: dropout on the LoRA input while training (PEFT's `lora_dropout`).
    targets: regexes over Dense module paths (no `/kernel`), e.g.
      `('.*attention/(query|key|value|out)', '.*/mlp/w.*')` for every kernel of
      the layers.
  """
  if rank < 1:
    raise ValueError(f"lora needs rank >= 1, got {rank}.")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"lora dropout_rate must be in [0, 1), got {dropout_rate}.")
  hook = LoraHook(hooks.check_targets(targets, "lora"), int(rank), float(alpha),
                  float(dropout_rate))
  return Method(name="lora", adapter=hook, trainable=TRAINABLE)


def lora_scale(method: Method) -> float:
  """alpha / r of a method made by `lora`."""
  if not isinstance(method.adapter, LoraHook):
    raise ValueError(f"Method {method.name!r} is not LoRA.")
  return method.adapter.scale


def merged(method: Method, params: Params) -> Params:
  """`merge` with the method's own alpha / r."""
  return merge(params, lora_scale(method))


def lora_summary(params: Params) -> Dict[str, Any]:
  """{module path: (in, r, out)} of the LoRA factors in a tree (for logs and docs)."""
  flat = flatten(params)
  return {m: (flat[f"{m}/lora_a"].shape[0], flat[f"{m}/lora_a"].shape[1],
              flat[f"{m}/lora_b"].shape[1])
          for m in hooks.kernel_paths(params, "lora_a")}
