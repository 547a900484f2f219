"""What GPT-2 and the Llama family share: the method hooks, positions, masks and the
key/value cache bookkeeping of a decoder-only language model.

A family provides a *backbone* (subclass of `Backbone`: embedding, blocks, final
norm; Hugging Face's `transformer` / `model`) and a top-level `CausalLM` subclass
(backbone + output layer). Three entry points, one per way the network runs:

  __call__(tokens [B, T], attention_mask [B, T]) → logits [B, T', V]  teacher-forced
  prefill(tokens, attention_mask, cache_length=L) → logits [B, T', V]  fills the cache
  step(tokens [B, 1])                             → logits [B, 1, V]   one cached token

`attention_mask` defaults to `tokens > 0` (seqio pads with 0). T' = T + P_prompt.

Method hooks (as for T5, see `prompt_tuning/models/t5.py`):
  * `prompt`: a module living at `<backbone>/prompt/…` (e.g. `model/prompt/prompt`)
    that rewrites the embedded input and its mask, `(x [B, T, H], mask [B, T]) ->
    ([B, T', H], [B, T'])`. With `needs_encoder_features = True` it receives
    `features [B, H]`, the masked mean of the frozen model's final hidden states on
    the un-prompted input (LoPA).
  * `prefix`: a module living at `prefix/…` returning `{'decoder': (keys, values)}`,
    each `[L, P, K, D]`, prepended to every layer's self-attention keys/values.
  * `adapter`: a Flax method interceptor active while the backbone runs (LoRA, IA3:
    `prompt_tuning/methods/hooks.py`); it adapts the frozen projections (`Linear`,
    GPT-2's fused `c_attn`) whose paths it targets, e.g. `model/layers_0/self_attn/
    q_proj`, creating its parameters beside their kernels. A hook must declare
    `supports_decoder_only = True` (`families.build` checks).

Positions. Prompt and prefix vectors occupy positions, as in PEFT and transformers
with `past_key_values`: the prompt takes positions 0…P-1 before the input, and a
P-long prefix shifts the input's positions by P. A token's position counts only the
real (unmasked) tokens before it, so a left-padded row starts at the same position
as an unpadded one.

The cache. `prefill` writes the prefix (P slots), then the prompted input (T'
slots) into caches of L slots and records, in collection `cache`:
  <backbone>/index         []  the next slot to write
  <backbone>/key_valid     [B, L] bool: slot holds a real key
  <backbone>/next_position [B]  the position of the next token
`step` writes one slot per call. All leaves with a batch axis have it first, so
beam search can reorder them.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.decoder_layers import Slots, attention_mask

Array = jax.Array
LayerPrefixes = Optional[Tuple[Array, Array]]  # (keys, values) [L, P, K, D]
MODES = ("train", "prefill", "step")


def masked_mean(hidden: Array, mask: Array) -> Array:
  """hidden [B, T, H], mask [B, T] → [B, H] float32 (zero rows give zeros)."""
  weights = mask[..., None].astype(jnp.float32)
  return (jnp.sum(hidden.astype(jnp.float32) * weights, axis=1) /
          jnp.maximum(jnp.sum(weights, axis=1), 1.0))


def layer_prefix(prefixes: LayerPrefixes, layer: int, batch: int):
  """Layer `layer` of `(keys, values) [L, P, K, D]` broadcast to `[B, P, K, D]`."""
  if prefixes is None:
    return None
  expand = lambda a: jnp.broadcast_to(a[layer][None], (batch,) + a.shape[1:])
  return tuple(expand(a) for a in prefixes)


class Backbone(nn.Module):
  """Embedding → prompt hook → blocks → final norm, for one family.

  Subclasses set up the family's submodules and implement `embed(tokens)`,
  `blocks(x, positions, slots, prefixes, mode, deterministic)` and
  `max_positions()` (None when positions are unbounded).
  """

  def embed(self, tokens: Array) -> Array:
    raise NotImplementedError

  def blocks(self, x, positions, slots, prefixes, decode, deterministic) -> Array:
    raise NotImplementedError

  def max_positions(self) -> Optional[int]:
    return None

  def sliding_window(self) -> Optional[int]:
    return None

  @nn.compact
  def __call__(self, tokens: Array, mask: Array, *, prefixes: LayerPrefixes = None,
               use_prompt: bool = True, features: Optional[Array] = None,
               prompt_index: Optional[Array] = None, mode: str = "train",
               cache_length: Optional[int] = None, new_tokens: Optional[int] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """tokens [B, T], mask [B, T] → (hidden [B, T', H], mask [B, T']).

    `prefill` sizes the cache by `cache_length` (all slots) or `new_tokens` (slots
    after the prefix and the prompted input).
    """
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    x = self.embed(tokens)
    if self.prompt is not None and use_prompt and mode != "step":
      x, mask = self.prompt(x, mask, features=features, prompt_index=prompt_index,
                            deterministic=deterministic)
    mask = mask.astype(bool)
    batch, length = mask.shape
    num_prefix = prefixes[0].shape[1] if prefixes is not None and mode != "step" else 0
    counted = jnp.cumsum(mask.astype(jnp.int32), axis=1)  # real tokens so far
    window = self.sliding_window()
    if mode == "train":
      positions = num_prefix + jnp.maximum(counted - 1, 0)
      valid = jnp.concatenate([jnp.ones((batch, num_prefix), bool), mask], axis=1)
      self._check_positions(num_prefix + length, "the prompted input (+ prefix)")
      slots = Slots(attention_mask(num_prefix + jnp.arange(length), valid, window))
      return self.final_norm(self.blocks(x, positions, slots, prefixes, False,
                                         deterministic)), mask

    if mode == "prefill":
      if cache_length is None and new_tokens is not None:
        cache_length = num_prefix + length + new_tokens
      if cache_length is None or num_prefix + length > cache_length:
        raise ValueError(f"prefill needs cache_length >= prefix + prompted input = "
                         f"{num_prefix} + {length}; got {cache_length}.")
      self._check_positions(cache_length, "cache_length")
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    key_valid = self.variable("cache", "key_valid", jnp.zeros,
                              (batch, cache_length or 0), bool)
    next_position = self.variable("cache", "next_position", jnp.zeros, (batch,),
                                  jnp.int32)
    if mode == "prefill":
      start = jnp.zeros((), jnp.int32)
      positions = num_prefix + jnp.maximum(counted - 1, 0)
      written = jnp.concatenate([jnp.ones((batch, num_prefix), bool), mask], axis=1)
    else:
      start = index.value
      positions = next_position.value[:, None] + jnp.maximum(counted - 1, 0)
      written = mask
    key_valid.value = jax.lax.dynamic_update_slice_in_dim(key_valid.value, written,
                                                          start, axis=1)
    query_slots = start + num_prefix + jnp.arange(length)
    slots = Slots(attention_mask(query_slots, key_valid.value, window), start,
                  key_valid.value.shape[1])
    layer_prefixes = prefixes if mode == "prefill" else None
    hidden = self.blocks(x, positions, slots, layer_prefixes, True, deterministic)
    index.value = start + num_prefix + length
    base = next_position.value if mode == "step" else num_prefix
    next_position.value = base + counted[:, -1]
    return self.final_norm(hidden), mask

  def _check_positions(self, needed: int, what: str):
    limit = self.max_positions()
    if limit is not None and needed > limit:
      raise ValueError(f"{what} spans {needed} positions but the model has only "
                       f"{limit} position embeddings; shorten the inputs or the "
                       "decode length.")


class CausalLM(nn.Module):
  """Top level shared by the families: prefix hook, LoPA features, output layer.

  Subclasses provide `backbone` (a `Backbone`, with the prompt) in `setup` and
  `logits(hidden [B, T, H]) -> [B, T, V] float32`.
  """

  def logits(self, hidden: Array) -> Array:
    raise NotImplementedError

  def _prefixes(self, deterministic: bool) -> LayerPrefixes:
    if self.prefix is None:
      return None
    prefixes = self.prefix(deterministic=deterministic)
    return prefixes["decoder"] if isinstance(prefixes, dict) else prefixes

  def _adapting(self, deterministic: bool):
    """The context in which the `adapter` hook intercepts module calls."""
    if getattr(self, "adapter", None) is None:
      return contextlib.nullcontext()
    return nn.intercept_methods(functools.partial(self.adapter,
                                                  deterministic=deterministic))

  def _features(self, tokens: Array, mask: Array,
                feature_mask: Optional[Array] = None) -> Optional[Array]:
    """LoPA's pooled input `[B, H]` over `feature_mask` (default: `mask`).

    Teacher-forced batches hold inputs and targets in one sequence; the loss passes
    a `feature_mask` of the input positions, so the features never see the targets
    and equal those of the prefill (which holds the input only).
    """
    if self.prompt is None:
      return None
    pool = mask if feature_mask is None else feature_mask.astype(bool) & mask
    if getattr(self.prompt, "needs_encoder_features", False):
      with self._adapting(True):
        plain, _ = self.backbone(tokens, mask, use_prompt=False, deterministic=True)
    elif feature_mask is not None and getattr(self.prompt, "features",
                                              None) == "embeddings":
      plain = self.backbone.embed(tokens)
    else:
      return None
    return jax.lax.stop_gradient(masked_mean(plain, pool))  # [B, H]

  def hidden_states(self, tokens: Array, attention_mask: Optional[Array] = None,
                    enable_dropout: bool = False, prompt_index: Optional[Array] = None,
                    mode: str = "train", cache_length: Optional[int] = None,
                    new_tokens: Optional[int] = None,
                    feature_mask: Optional[Array] = None) -> Tuple[Array, Array]:
    """Final hidden states [B, T', H] and their mask [B, T'] (after the prompt)."""
    deterministic = not enable_dropout
    mask = tokens > 0 if attention_mask is None else attention_mask.astype(bool)
    features = (self._features(tokens, mask, feature_mask) if mode != "step"
                else None)
    prefixes = self._prefixes(deterministic)
    with self._adapting(deterministic):
      return self.backbone(tokens, mask, prefixes=prefixes, features=features,
                           prompt_index=prompt_index, mode=mode,
                           cache_length=cache_length, new_tokens=new_tokens,
                           deterministic=deterministic)

  def __call__(self, tokens: Array, attention_mask: Optional[Array] = None,
               enable_dropout: bool = False,
               prompt_index: Optional[Array] = None,
               feature_mask: Optional[Array] = None) -> Array:
    """Teacher-forced logits [B, T', V] float32 (T' = T + prompt length).

    `feature_mask [B, T]`: the input positions LoPA pools (default: all real ones).
    """
    hidden, _ = self.hidden_states(tokens, attention_mask, enable_dropout,
                                   prompt_index, feature_mask=feature_mask)
    return self.logits(hidden)

  def prefill(self, tokens: Array, attention_mask: Optional[Array] = None, *,
              cache_length: int, prompt_index: Optional[Array] = None) -> Array:
    """Creates and fills the cache (apply with `mutable=['cache']`); logits [B, T', V]."""
    hidden, _ = self.hidden_states(tokens, attention_mask, prompt_index=prompt_index,
                                   mode="prefill", cache_length=cache_length)
    return self.logits(hidden)

  def prefill_last(self, tokens: Array, attention_mask: Optional[Array] = None, *,
                   new_tokens: int, prompt_index: Optional[Array] = None) -> Array:
    """Fills a cache with room for `new_tokens` more; returns the logits [B, V] at
    each row's last real position (the next-token distribution)."""
    hidden, mask = self.hidden_states(tokens, attention_mask, prompt_index=prompt_index,
                                      mode="prefill", new_tokens=new_tokens)
    positions = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(mask, positions, 0), axis=1)  # [B]
    hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [B, 1, H]
    return self.logits(hidden)[:, 0]

  def step(self, tokens: Array, attention_mask: Optional[Array] = None) -> Array:
    """tokens [B, T] (usually T = 1) after the cached ones → logits [B, T, V]."""
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, bool)
    hidden, _ = self.hidden_states(tokens, attention_mask, mode="step")
    return self.logits(hidden)

