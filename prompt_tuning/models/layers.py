"""T5.1.1 building blocks in Flax: dense, embedding, RMS norm, attention, MLP, relpos.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`)
so that one rule table (`prompt_tuning.partitioning`) maps them to mesh axes.
Kernels are stored 2-D, `[in, out]`, exactly as in the T5X checkpoints
(attention kernels are `[embed, heads * head_dim]`, logical `('embed', 'joined_kv')`).

Shape letters: B batch, T / S query / key length, H model width (embed), N heads,
D head_dim, P prompt or prefix length.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.sharding import constrain

Array = jax.Array
Dtype = Any

# A large negative number for masked attention logits (finite, so fully masked rows
# stay finite and padding rows never produce NaNs).
NEG_INF = -1e10


def param(module: nn.Module, name: str, init, shape, axes, dtype=jnp.float32):
  """Creates a float32 parameter annotated with logical axis names."""
  if len(axes) != len(shape):
    raise ValueError(f"{module.name}/{name}: {len(axes)} axis names {axes} for a "
                     f"rank-{len(shape)} parameter {shape}.")
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


# ------------------------------------------------------------------------------------
# Dropout.
# ------------------------------------------------------------------------------------


def _mix32(h: Array) -> Array:
  """murmur3's 32-bit finalizer: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hashed_bits(seed: Array, shape: Sequence[int]) -> Array:
  """uint32 random bits of `shape`: a keyed hash of each element's flat index.

  `seed [2] uint32` is the data of the dropout key for this call. The
  elementwise hash is a few integer ops that XLA fuses into the consumer, where
  drawing `prod(shape)` threefry words costs ~10% of a CPU train step.
  """
  size = math.prod(shape)
  if size >= 2**32:
    raise ValueError(f"hashed_bits indexes elements with uint32; {shape} has "
                     f"{size} elements. Split the array.")
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  return _mix32(_mix32(index ^ seed[0]) + seed[1])


def _keep_mask(seed: Array, shape: Tuple[int, ...], rate: float) -> Array:
  threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
  return hashed_bits(seed, shape) >= threshold


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dropout(x: Array, seed: Array, rate: float, mask_shape: Tuple[int, ...]) -> Array:
  keep = _keep_mask(seed, mask_shape, rate)
  return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype),
                   jnp.zeros((), x.dtype))


def _dropout_fwd(x, seed, rate, mask_shape):
  return _dropout(x, seed, rate, mask_shape), seed


def _dropout_bwd(rate, mask_shape, seed, g):
  # The mask is recomputed from the seed, so the backward pass keeps no mask.
  return (_dropout(g, seed, rate, mask_shape),
          np.zeros(seed.shape, dtype=jax.dtypes.float0))


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


class Dropout(nn.Module):
  """Inverted dropout (as `nn.Dropout`) whose mask is a keyed hash of the position.

  Same semantics as `flax.linen.Dropout`: drops with probability `rate` (to a
  resolution of 2^-32), scales the kept values by 1 / (1 - rate), shares the mask
  along `broadcast_dims`, and draws from the `'dropout'` RNG stream. The mask is
  `hashed_bits` of a seed taken from that stream instead of one threefry word per
  element, which XLA fuses into the surrounding elementwise work; the backward
  pass recomputes it from the seed.
  """
  rate: float
  broadcast_dims: Sequence[int] = ()
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    mask_shape = list(x.shape)
    for dim in self.broadcast_dims:
      mask_shape[dim] = 1
    # The stream's key for this call (flax folds the module path and a counter
    # in) is already hashed bits: use them as the seed, with no extra draw.
    seed = jnp.ravel(jax.random.key_data(self.make_rng(self.rng_collection)))[:2]
    seed = seed.astype(jnp.uint32)
    return _dropout(x, seed, float(self.rate), tuple(mask_shape))


class Dense(nn.Module):
  """`y = x @ kernel`, no bias. kernel: `[in, features]` with the given axis names."""
  features: int
  kernel_axes: Tuple[str, str]
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                   self.kernel_axes)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
  """Token embedding table `[vocab, embed]`; also usable as the frozen lookup table."""
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = param(self, "embedding", nn.initializers.normal(stddev=1.0),
                           (self.num_embeddings, self.features), ("vocab", "embed"))

  def __call__(self, tokens: Array) -> Array:
    """tokens [B, T] int → [B, T, H]."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias. Computed in float32."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) +
                              self.epsilon)
    return (x32 * scale).astype(self.dtype)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bucketing of `key_position - query_position` (computed in numpy, static).

  Small distances get one bucket each; larger ones share log-spaced buckets up to
  `max_distance`. Bidirectional (encoder) splits the buckets between the two signs;
  causal (decoder) buckets only look back. float32 arithmetic, as in the original
  Mesh TensorFlow and the Hugging Face ports, so bucket edges agree exactly.
  """
  relative_position = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  with np.errstate(divide="ignore"):
    scaled = (np.log(distance.astype(np.float32) / np.float32(max_exact)) /
              np.float32(math.log(max_distance / max_exact)) *
              np.float32(num_buckets - max_exact))
  scaled = np.where(is_small, 0, scaled)  # avoid casting -inf for distance 0
  if_large = max_exact + scaled.astype(np.int64)
  if_large = np.minimum(if_large, num_buckets - 1)
  return buckets + np.where(is_small, distance, if_large)


class RelativePositionBiases(nn.Module):
  """One `[heads, buckets]` table per stack, shared across that stack's layers."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_length: int, key_length: int) -> Array:
    """Returns the bias `[1, N, T, S]` for T query and S key positions (static)."""
    table = param(self, "rel_embedding",
                  nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                  (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    context = np.arange(query_length)[:, None]
    memory = np.arange(key_length)[None, :]
    buckets = relative_position_bucket(memory - context, self.bidirectional,
                                       self.num_buckets, self.max_distance)
    # One-hot contraction instead of a gather: cheap and partitions cleanly.
    one_hot = jnp.asarray(np.arange(self.num_buckets) == buckets[..., None],
                          dtype=table.dtype)
    bias = jnp.einsum("nk,tsk->nts", table, one_hot)[None]
    return bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """T5 attention: no 1/sqrt(D) scaling (folded into the query init), no biases.

  Optional `prefix` key/values (prefix tuning) are prepended to the keys and values
  of every call, always visible and with no position bias. In `decode` mode a
  key/value cache (collection `cache`) holds the past of a single-token query.
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               bias: Optional[Array] = None, *,
               prefix: Optional[Tuple[Array, Array]] = None,
               decode: bool = False, cache_inputs_kv: bool = False,
               cache_length: Optional[int] = None,
               deterministic: bool = True) -> Array:
    """inputs_q [B, T, H], inputs_kv [B, S, H], mask [B, 1, T, S] (bool),
    bias [1|B, N, T, S], prefix (k, v) each [B, P, N, D], or (k, v, visible [B, P])
    when some examples see fewer (or none) of the P prefix positions → [B, T, H].

    `decode`: self-attention over a key/value cache of `cache_length` positions
    (default: the creating call's length). `cache_inputs_kv`: `inputs_kv` is the
    same at every call (cross-attention to the encoder output while decoding),
    so its keys and values are projected once, when the cache is created, and
    read from the cache afterwards.
    """
    width = self.num_heads * self.head_dim
    emb_dim = inputs_q.shape[-1]
    init = lambda scale: nn.initializers.variance_scaling(scale, "fan_in", "normal")
    dense = lambda name, scale=1.0: Dense(width, ("embed", "joined_kv"), self.dtype,
                                          kernel_init=init(scale), name=name)
    heads = ("batch", "length", "heads", "kv")
    split = lambda x: constrain(
        x.reshape(x.shape[:2] + (self.num_heads, self.head_dim)), heads)
    query = split(dense("query", 1.0 / self.head_dim)(inputs_q))  # [B, T, N, D]
    project = lambda name: split(dense(name)(inputs_kv))  # [B, S, N, D]
    if cache_inputs_kv:
      key = self.variable("cache", "cached_input_key", project, "key").value
      value = self.variable("cache", "cached_input_value", project, "value").value
    else:
      key, value = project("key"), project("value")

    if decode:
      key, value, mask, bias = self._update_cache(key, value, mask, bias,
                                                  cache_length)

    if prefix is not None:
      prefix_k, prefix_v = (p.astype(self.dtype) for p in prefix[:2])  # [B, P, N, D]
      visible = prefix[2] if len(prefix) > 2 else None  # [B, P] bool, or all visible
      num_prefix = prefix_k.shape[1]
      key = jnp.concatenate([prefix_k, key], axis=1)
      value = jnp.concatenate([prefix_v, value], axis=1)
      if visible is not None and mask is None:
        mask = jnp.ones((query.shape[0], 1, query.shape[1], key.shape[1] - num_prefix),
                        bool)
      if mask is not None:
        shape = mask.shape[:3] + (num_prefix,)
        seen = (jnp.ones(shape, mask.dtype) if visible is None else
                jnp.broadcast_to(visible[:, None, None, :], shape).astype(mask.dtype))
        mask = jnp.concatenate([seen, mask], axis=-1)
      if bias is not None:
        bias = jnp.concatenate(
            [jnp.zeros(bias.shape[:3] + (num_prefix,), bias.dtype), bias], axis=-1)

    logits = jnp.einsum("btnd,bsnd->bnts", query, key).astype(jnp.float32)
    logits = constrain(logits, ("batch", "heads", "length", None))  # [B, N, T, S]
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = Dropout(self.dropout_rate)(weights, deterministic=False)
    out = constrain(jnp.einsum("bnts,bsnd->btnd", weights, value), heads)
    out = out.reshape(out.shape[:2] + (width,))
    return Dense(emb_dim, ("joined_kv", "embed"), self.dtype, kernel_init=init(1.0),
                 name="out")(out)

  def _update_cache(self, key, value, mask, bias, cache_length=None):
    """Writes this step's key/value at `cache_index`; masks the future.

    `bias` arrives for all `[max_length, max_length]` positions and leaves as this
    step's row `[1, N, 1, max_length]`. The first call only creates the cache,
    `cache_length` positions long (default: that call's length), and attends
    within its own input.
    """
    initialized = self.has_variable("cache", "cached_key")
    shape = (key.shape[0], cache_length or key.shape[1]) + key.shape[2:]
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape,
                                 value.dtype)
    cache_index = self.variable("cache", "cache_index",
                                lambda: jnp.array(0, dtype=jnp.int32))
    if not initialized:
      length = key.shape[1]
      if bias is not None:
        bias = bias[:, :, :length, :length]
      return key, value, mask, bias
    batch, max_length = cached_key.value.shape[:2]
    if key.shape[1] != 1:
      raise ValueError(f"Incremental decoding feeds one token at a time; got a query "
                       f"of length {key.shape[1]}.")
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice_in_dim(
        cached_key.value, key.astype(cached_key.value.dtype), index, axis=1)
    cached_value.value = jax.lax.dynamic_update_slice_in_dim(
        cached_value.value, value.astype(cached_value.value.dtype), index, axis=1)
    cache_index.value = index + 1
    visible = (jnp.arange(max_length) <= index)[None, None, None, :]
    visible = jnp.broadcast_to(visible, (batch, 1, 1, max_length))
    mask = visible if mask is None else jnp.logical_and(mask, visible)
    if bias is not None:
      bias = jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=2)
    return cached_key.value, cached_value.value, mask, bias


class GatedMlp(nn.Module):
  """T5.1.1 feed-forward: `wo(gelu(wi_0 x) * wi_1 x)` (tanh-approximate GELU)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    """x [B, T, H] → [B, T, H]."""
    gate = Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name="wi_0")(x)
    linear = Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name="wi_1")(x)
    h = jax.nn.gelu(gate, approximate=True) * linear
    h = constrain(h, ("batch", "length", "mlp"))  # [B, T, F]
    h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return Dense(x.shape[-1], ("mlp", "embed"), self.dtype, name="wo")(h)
