"""Building blocks shared by the decoder-only families (GPT-2, Llama).

  Linear            `x @ kernel (+ bias)`, kernel `[in, out]` (HF `Linear.weight`ᵀ)
  LayerNorm         mean/variance norm with scale and bias (GPT-2), float32 inside
  rope_frequencies  RoPE inverse frequencies, with transformers' scaling options
  apply_rope        rotates the first `rotary_dim` channels of each head
  causal_attention  grouped-query attention over [prefix, cache or keys], with the
                    key/value cache of cached decoding

The layout of one key/value cache (collection `cache`, per attention layer):
  cached_key, cached_value  [B, L, K, D]   L slots: P prefix slots, then the
                            prompted input, then the generated tokens.
Which slots a query sees is decided by the model (`DecoderMask`): the attention
only writes its new keys at the model's slot index and applies the mask.

Shape letters: B batch, T new positions, S key slots, H width, N query heads,
K key/value heads (N = G·K), D head_dim, P prefix length, L cache slots.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.layers import NEG_INF, Dropout, param

Array = jax.Array
Dtype = Any


class Linear(nn.Module):
  """`x @ kernel + bias`; kernel `[in, features]`, bias `[features]` (optional)."""
  features: int
  kernel_axes: Tuple[str, str]
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                   self.kernel_axes)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = param(self, "bias", nn.initializers.zeros, (self.features,),
                   self.kernel_axes[1:])
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """`(x - mean) / sqrt(var + eps) * scale + bias` over the last axis, in float32."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (x.shape[-1],)
    scale = param(self, "scale", nn.initializers.ones, features, ("embed",))
    bias = param(self, "bias", nn.initializers.zeros, features, ("embed",))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


# ------------------------------------------------------------------------------------
# Rotary position embedding.
# ------------------------------------------------------------------------------------


def rope_frequencies(rotary_dim: int, theta: float, scaling: Dict[str, Any],
                     max_position_embeddings: int, length: int) -> np.ndarray:
  """Inverse frequencies `[rotary_dim / 2]` (float32, static), as transformers.

  `scaling` is transformers' `rope_scaling` dict (empty: plain RoPE):
    linear   frequencies / factor;
    dynamic  (NTK) the base grows with the sequence length once `length` exceeds
             `max_position_embeddings`; `length` is the static number of positions
             of this call (the cache length when decoding);
    llama3   Llama 3.1's smooth per-band scaling.
  """
  exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "dynamic":
    factor = scaling["factor"]
    seq_len = max(length, max_position_embeddings)
    theta = theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (
        rotary_dim / (rotary_dim - 2))
  inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
  if rope_type == "linear":
    inv_freq = inv_freq / np.float32(scaling["factor"])
  elif rope_type == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    scaled = np.where(wavelength > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < original / high) & ~(wavelength > original / low)
    inv_freq = np.where(medium, smoothed, scaled)
  elif rope_type not in ("default", "dynamic"):
    raise ValueError(f"RoPE scaling {rope_type!r} is not supported; use one of "
                     "'linear', 'dynamic', 'llama3' (or none).")
  return inv_freq.astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """x [B, T, N, D], positions [B, T] int → x with its first 2·len(inv_freq)
  channels rotated (transformers' rotate-half convention, halves not pairs)."""
  rotary_dim = 2 * inv_freq.shape[0]
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B,T,D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, Dr]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  rot, rest = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
  half = rotary_dim // 2
  rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  out = (rot * cos + rotated * sin).astype(x.dtype)
  return jnp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


# ------------------------------------------------------------------------------------
# Masks and attention.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Slots:
  """Where this call's keys go and what its queries see (built by the model).

  Attributes:
    mask: [B, 1, T, S] bool, S = P + T without a cache, else the cache length L.
    write_index: slot of the first key written this call (decode only; traced).
    cache_length: L (decode only; static).
  """
  mask: Array
  write_index: Optional[Array] = None
  cache_length: Optional[int] = None


def attention_mask(query_slots: Array, key_valid: Array,
                   sliding_window: Optional[int] = None) -> Array:
  """query_slots [T] int, key_valid [B, S] bool → [B, 1, T, S] bool.

  A query at slot q sees slot s when s holds a real key, s <= q, and (with a
  window W) q - s < W. Slots count prefix and prompt positions too.
  """
  slots = jnp.arange(key_valid.shape[1])
  visible = slots[None, :] <= query_slots[:, None]  # [T, S]
  if sliding_window is not None:
    visible &= (query_slots[:, None] - slots[None, :]) < sliding_window
  return visible[None, None] & key_valid[:, None, None, :]


def causal_attention(module: nn.Module, query: Array, key: Array, value: Array,
                     slots: Slots, *, scale: float,
                     prefix: Optional[Tuple[Array, Array]] = None,
                     decode: bool = False, dropout_rate: float = 0.0,
                     deterministic: bool = True) -> Array:
  """query [B, T, N, D], key/value [B, T, K, D], prefix (k, v) [B, P, K, D]
  → [B, T, N, D].

  Keys are `[prefix, key]`. With `decode`, they are first written into the
  module's cache at `slots.write_index` and the queries attend over all L slots.
  `slots.mask` says which keys each query sees (prefix slots always).
  """
  if prefix is not None:
    prefix_k, prefix_v = (p.astype(key.dtype) for p in prefix)
    key = jnp.concatenate([prefix_k, key], axis=1)
    value = jnp.concatenate([prefix_v, value], axis=1)
  if decode:
    shape = (key.shape[0], slots.cache_length) + key.shape[2:]
    cached_key = module.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
    cached_value = module.variable("cache", "cached_value", jnp.zeros, shape,
                                   value.dtype)
    cached_key.value = jax.lax.dynamic_update_slice_in_dim(
        cached_key.value, key.astype(cached_key.value.dtype), slots.write_index, 1)
    cached_value.value = jax.lax.dynamic_update_slice_in_dim(
        cached_value.value, value.astype(cached_value.value.dtype),
        slots.write_index, 1)
    key, value = cached_key.value, cached_value.value
  batch, length, num_heads, head_dim = query.shape
  num_kv = key.shape[2]
  grouped = query.reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
  logits = jnp.einsum("btkgd,bskd->bkgts", grouped.astype(jnp.float32),
                      key.astype(jnp.float32)) * scale  # [B, K, G, T, S]
  mask = slots.mask[:, :, None]  # [B, 1, 1, T, S]
  logits = jnp.where(mask, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(query.dtype)
  if not deterministic and dropout_rate > 0:
    weights = Dropout(dropout_rate)(weights, deterministic=False)
  out = jnp.einsum("bkgts,bskd->btkgd", weights, value.astype(query.dtype))
  return out.reshape(batch, length, num_heads, head_dim)
