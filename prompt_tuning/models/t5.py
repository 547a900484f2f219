"""The T5.1.1 encoder-decoder, with parameter paths exactly as in T5X checkpoints.

  token_embedder/embedding                         [vocab, H]
  encoder/relpos_bias/rel_embedding                [N, buckets]
  encoder/layers_i/pre_attention_layer_norm/scale  [H]
  encoder/layers_i/attention/{query,key,value}/kernel  [H, N*D];  out/kernel [N*D, H]
  encoder/layers_i/pre_mlp_layer_norm/scale        [H]
  encoder/layers_i/mlp/{wi_0,wi_1}/kernel [H, F];  mlp/wo/kernel [F, H]
  encoder/encoder_norm/scale                       [H]
  decoder/layers_i/{pre_self_attention_layer_norm, self_attention,
                    pre_cross_attention_layer_norm, encoder_decoder_attention,
                    pre_mlp_layer_norm, mlp}/…
  decoder/decoder_norm/scale, decoder/relpos_bias/rel_embedding
  decoder/logits_dense/kernel                      [H, vocab]

Parameter-efficient methods (`prompt_tuning/methods/`) enter through two hooks, so
that this file stays the frozen network and nothing else:
  * `prompt`: a module living at `encoder/prompt/…` that rewrites the embedded
    encoder input and its mask, `(x [B, T, H], mask [B, T]) -> ([B, T', H], [B, T'])`
    (prompt tuning, prompt banks, LoPA). If it has `needs_encoder_features = True`,
    the encoder first runs on the un-prompted input and the prompt receives the
    masked mean of that output as `features [B, H]`.
  * `prefix`: a module living at `prefix/…` returning per-layer key/value prefixes,
    `{'encoder' | 'decoder' | 'cross': (keys, values) each [L, P, N, D]}` (prefix
    tuning; 'cross' prefixes the decoder's encoder-decoder attention), or per example
    `[B, L, P, N, D]` plus `visible [B, P]` (a prefix bank). A module with
    `takes_prompt_index = True` is called with the batch's `prompt_index`.
  * `adapter`: a Flax method interceptor `(next_fun, args, kwargs, context, *,
    deterministic) -> output` that is active while the encoder and the decoder run
    (LoRA, IA3, per-layer prompts). It sees every module call, so it can adapt a
    frozen `Dense` chosen by its path without copying layers; parameters it creates
    on the intercepted module live under that module's own path (e.g.
    `encoder/layers_0/attention/query/lora_a`), so frozen paths never change.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import (Dense, Dropout, Embed, GatedMlp,
                                         MultiHeadAttention, RelativePositionBiases,
                                         RMSNorm)
from prompt_tuning.models.sharding import constrain

Array = jax.Array
Prefixes = Dict[str, Tuple[Array, Array]]
RESIDUAL = ("batch", "length", "embed")  # the residual stream [B, T, H]

# What a layer keeps for the backward pass under each `T5Config.remat_policy`
# (flaxformer's `layer_remat`); 'none' does not wrap the layer at all.
_REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_layer(layer_cls, policy: str, static_argnums: Tuple[int, ...]):
  """`layer_cls`, rematerialized by `policy` ('none' | 'minimal' | 'full').

  `static_argnums` index `__call__`'s positional arguments with `self` as 0 (the
  Python flags: deterministic, decode, cache length).
  """
  if policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=_REMAT_POLICIES[policy],
                  static_argnums=static_argnums)


def _layer_prefix(prefixes: Optional[Prefixes], stack: str, layer: int, batch: int):
  """Layer `layer` of a stack's prefixes as `[B, P, N, D]` keys and values.

  A stack's prefixes are `(keys, values)`, each `[L, P, N, D]` (one prefix for the
  whole batch, broadcast) or `[B, L, P, N, D]` (one per example, e.g. gathered from
  a prefix bank), optionally followed by `visible [B, P]` (bool) when examples use
  fewer of the P positions (a shorter prefix, or none).
  """
  if not prefixes or stack not in prefixes:
    return None
  keys, values, *visible = prefixes[stack]
  def expand(a):
    if a.ndim == 5:
      return a[:, layer]
    return jnp.broadcast_to(a[layer][None], (batch,) + a.shape[1:])
  return (expand(keys), expand(values), *visible)


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, mask, bias, prefix=None, deterministic=True):
    """x [B, T, H], mask [B, 1, 1, T], bias [1, N, T, T] → [B, T, H]."""
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = constrain(x, RESIDUAL)
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dtype, cfg.dropout_rate,
                           name="attention")(y, y, mask, bias, prefix=prefix,
                                             deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_mlp_layer_norm")(x)
    y = GatedMlp(cfg.mlp_dim, cfg.dtype, cfg.dropout_rate, name="mlp")(y, deterministic)
    return constrain(x + dropout(y, deterministic=deterministic), RESIDUAL)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, encoded, self_mask, cross_mask, bias, prefix=None,
               deterministic=True, decode=False, max_decode_length=None,
               cross_prefix=None):
    """x [B, T, H], encoded [B, S, H], self_mask [B, 1, T, T] or None,
    cross_mask [B, 1, 1, S], bias [1, N, T, T] → [B, T, H].

    While decoding, the self-attention cache holds `max_decode_length` positions
    and cross-attention keeps the encoder output's keys and values in the cache.
    """
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    attention = lambda name: MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dtype,
                                                cfg.dropout_rate, name=name)
    norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name=name)
    x = constrain(x, RESIDUAL)
    y = norm("pre_self_attention_layer_norm")(x)
    y = attention("self_attention")(y, y, self_mask, bias, prefix=prefix,
                                    decode=decode, cache_length=max_decode_length,
                                    deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = norm("pre_cross_attention_layer_norm")(x)
    y = attention("encoder_decoder_attention")(y, encoded, cross_mask,
                                               prefix=cross_prefix,
                                               cache_inputs_kv=decode,
                                               deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = norm("pre_mlp_layer_norm")(x)
    y = GatedMlp(cfg.mlp_dim, cfg.dtype, cfg.dropout_rate, name="mlp")(y, deterministic)
    return constrain(x + dropout(y, deterministic=deterministic), RESIDUAL)


# ------------------------------------------------------------------------------------
# Scanned stacks (`T5Config.scan_layers`): the layer's parameters stacked on a leading
# `layers` axis, per-layer prefixes sliced by the scan. See `models/scan.py`.
# ------------------------------------------------------------------------------------


def _scan_prefix(prefixes: Optional[Prefixes], stack: str):
  """A stack's prefixes split for `nn.scan`: (scanned `(keys, values)` each
  `[L, P, N, D]` or `[L, B, P, N, D]`, broadcast `visible` tuple)."""
  if not prefixes or stack not in prefixes:
    return None, ()
  keys, values, *visible = prefixes[stack]
  layer_first = lambda a: jnp.moveaxis(a, 1, 0) if a.ndim == 5 else a
  return (layer_first(keys), layer_first(values)), tuple(visible)


def _batch_prefix(kv, visible, batch: int):
  """One layer's scanned slice `(keys, values)` ([P, N, D] or [B, P, N, D]) as the
  `[B, P, N, D]` prefix the attention takes (None when the stack has none)."""
  if kv is None:
    return None
  expand = lambda a: a if a.ndim == 4 else jnp.broadcast_to(a[None], (batch,) + a.shape)
  return (expand(kv[0]), expand(kv[1]), *visible)


class _ScannedEncoderLayer(EncoderLayer):
  """`EncoderLayer` in `nn.scan`'s `(carry, xs) -> (carry, ys)` form."""

  def __call__(self, x, prefix_kv, mask, bias, visible, deterministic=True):
    prefix = _batch_prefix(prefix_kv, visible, x.shape[0])
    return super().__call__(x, mask, bias, prefix, deterministic), None


class _ScannedDecoderLayer(DecoderLayer):
  """`DecoderLayer` (teacher forced, no cache) in `nn.scan`'s form."""

  def __call__(self, x, prefix_kv, cross_kv, encoded, self_mask, cross_mask, bias,
               visible, cross_visible, deterministic=True):
    batch = x.shape[0]
    return super().__call__(x, encoded, self_mask, cross_mask, bias,
                            _batch_prefix(prefix_kv, visible, batch), deterministic,
                            False, None,
                            _batch_prefix(cross_kv, cross_visible, batch)), None


def scanned_stack(layer_cls, config: T5Config, length: int, static_argnum: int,
                  num_scanned: int, num_broadcast: int, name: str = "layers"):
  """`length` copies of `layer_cls` run by `nn.scan` (remat inside, as flaxformer).

  `layer_cls.__call__(self, carry, *scanned, *broadcast, deterministic)`:
  `num_scanned` arguments sliced on their leading axis, `num_broadcast` the same
  for every layer; `static_argnum` is `deterministic`'s position (self = 0).
  Parameters get a leading `[L]` axis named `layers`.
  """
  layer = remat_layer(layer_cls, config.remat_policy, static_argnums=(static_argnum,))
  scanned = nn.scan(layer, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(0,) * num_scanned + (nn.broadcast,) * (num_broadcast + 1),
                    length=length, metadata_params={nn.PARTITION_NAME: "layers"})
  return scanned(config, name=name)


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module
  prompt: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.relpos_bias = RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidirectional=True, dtype=cfg.dtype)
    # (self, x, mask, bias, prefix, deterministic): `deterministic` is static.
    if cfg.scan_layers:
      # (self, x, prefix_kv | mask, bias, visible, deterministic)
      self.layers = scanned_stack(_ScannedEncoderLayer, cfg, cfg.num_encoder_layers,
                                  static_argnum=6, num_scanned=1, num_broadcast=3)
    else:
      layer = remat_layer(EncoderLayer, cfg.remat_policy, static_argnums=(5,))
      self.layers = [layer(cfg) for _ in range(cfg.num_encoder_layers)]
    self.encoder_norm = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype)
    self.dropout = Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

  def __call__(self, tokens: Array, *, use_prompt: bool = True,
               features: Optional[Array] = None, prompt_index: Optional[Array] = None,
               prefixes: Optional[Prefixes] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """tokens [B, T] → (encoded [B, T', H], mask [B, T'] bool); T' = T + P with a prompt.

    The prompt is inserted before input dropout; the relative position buckets then
    span all T' positions, and the returned mask is the one cross-attention uses.
    """
    x = self.shared_embedding(tokens)  # [B, T, H]
    mask = tokens > 0
    if self.prompt is not None and use_prompt:
      x, mask = self.prompt(x, mask, features=features, prompt_index=prompt_index,
                            deterministic=deterministic)
    x = self.dropout(x.astype(self.config.dtype), deterministic=deterministic)
    length = x.shape[1]
    bias = self.relpos_bias(length, length)  # [1, N, T', T']
    attention_mask = mask[:, None, None, :]  # keys only; padded queries are ignored
    if self.config.scan_layers:
      kv, visible = _scan_prefix(prefixes, "encoder")
      x, _ = self.layers(x, kv, attention_mask, bias, visible, deterministic)
    else:
      for i, layer in enumerate(self.layers):
        x = layer(x, attention_mask, bias, _layer_prefix(prefixes, "encoder", i,
                                                         x.shape[0]), deterministic)
    x = self.encoder_norm(x)
    return self.dropout(x, deterministic=deterministic), mask


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = RelativePositionBiases(
        cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
        cfg.num_heads, bidirectional=False, dtype=cfg.dtype)
    # (self, x, encoded, self_mask, cross_mask, bias, prefix, deterministic, decode,
    #  max_decode_length): the last three are static.
    if cfg.scan_layers:
      # (self, x, prefix_kv, cross_kv | encoded, self_mask, cross_mask, bias,
      #  visible, cross_visible, deterministic)
      self.layers = scanned_stack(_ScannedDecoderLayer, cfg, cfg.num_decoder_layers,
                                  static_argnum=10, num_scanned=2, num_broadcast=6)
    else:
      layer = remat_layer(DecoderLayer, cfg.remat_policy, static_argnums=(7, 8, 9))
      self.layers = [layer(cfg) for _ in range(cfg.num_decoder_layers)]
    self.decoder_norm = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype)
    self.dropout = Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    self.logits_dense = Dense(cfg.vocab_size, ("embed", "vocab"), cfg.dtype)

  def __call__(self, encoded: Array, encoder_mask: Array, tokens: Array, *,
               prefixes: Optional[Prefixes] = None, deterministic: bool = True,
               decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """encoded [B, S, H], encoder_mask [B, S], tokens [B, T] → logits [B, T, vocab] f32.

    With `decode=True` tokens is `[B, 1]`, the next position is read from the cache,
    and `max_decode_length` (the cache length) sizes the position bias.
    """
    batch, length = tokens.shape
    if decode and self.config.scan_layers:
      raise ValueError("Cached decoding is not supported with T5Config.scan_layers="
                       "True; decode with scan_layers=False (same checkpoints and "
                       "exports): --gin.t5_preset.scan_layers=False.")
    x = self.dropout(self.shared_embedding(tokens), deterministic=deterministic)
    if decode:
      bias_length = max_decode_length or length
      bias = self.relpos_bias(bias_length, bias_length)  # sliced per step in attention
      self_mask = None  # the cache masks future positions
    else:
      bias = self.relpos_bias(length, length)
      causal = jnp.tril(jnp.ones((length, length), dtype=bool))
      self_mask = jnp.broadcast_to(causal, (batch, 1, length, length))
    cross_mask = encoder_mask[:, None, None, :]
    if self.config.scan_layers:
      kv, visible = _scan_prefix(prefixes, "decoder")
      cross_kv, cross_visible = _scan_prefix(prefixes, "cross")
      x, _ = self.layers(x, kv, cross_kv, encoded, self_mask, cross_mask, bias,
                         visible, cross_visible, deterministic)
    else:
      for i, layer in enumerate(self.layers):
        x = layer(x, encoded, self_mask, cross_mask, bias,
                  _layer_prefix(prefixes, "decoder", i, batch), deterministic, decode,
                  max_decode_length if decode else None,
                  _layer_prefix(prefixes, "cross", i, batch))
    x = self.dropout(self.decoder_norm(x), deterministic=deterministic)
    logits = self.logits_dense(x).astype(jnp.float32)
    return constrain(logits, ("batch", "length", "vocab"))  # [B, T, V]


class Transformer(nn.Module):
  """T5.1.1 encoder-decoder with optional method hooks (`prompt`, `prefix`).

  `apply({'params': p}, encoder_input_tokens, decoder_input_tokens,
  decoder_target_tokens, enable_dropout=False)` returns logits `[B, T_dec, vocab]`.
  """
  config: T5Config
  prompt: Optional[nn.Module] = None
  prefix: Optional[nn.Module] = None
  adapter: Optional[Callable[..., Any]] = None

  def setup(self):
    cfg = self.config
    if cfg.scan_layers and self.adapter is not None:
      raise ValueError("T5Config.scan_layers=True does not support methods that enter "
                       "through the adapter hook (LoRA, IA3, deep prompts); train them "
                       "with --gin.t5_preset.scan_layers=False.")
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.dtype)
    # The prompt module must live at `encoder/prompt/…` (as in T5X prompt tuning).
    # Flax adopts a module passed as a field into the module that holds the field,
    # so hand the encoder a detached copy; this module never calls its own.
    prompt = self.prompt.clone(parent=None) if self.prompt is not None else None
    self.encoder = Encoder(cfg, self.token_embedder, prompt)
    self.decoder = Decoder(cfg, self.token_embedder)

  def _adapting(self, deterministic: bool):
    """The context in which the `adapter` hook intercepts module calls."""
    if self.adapter is None:
      return contextlib.nullcontext()
    return nn.intercept_methods(functools.partial(self.adapter,
                                                  deterministic=deterministic))

  def _prefixes(self, deterministic: bool,
                prompt_index: Optional[Array] = None) -> Optional[Prefixes]:
    if self.prefix is None:
      return None
    if getattr(self.prefix, "takes_prompt_index", False):
      return self.prefix(deterministic=deterministic, prompt_index=prompt_index)
    return self.prefix(deterministic=deterministic)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_index: Optional[Array] = None) -> Tuple[Array, Array]:
    """encoder_input_tokens [B, T] → (encoded [B, T', H], encoder_mask [B, T'])."""
    deterministic = not enable_dropout
    features = None
    if self.prompt is not None and getattr(self.prompt, "needs_encoder_features", False):
      with self._adapting(True):
        plain, plain_mask = self.encoder(encoder_input_tokens, use_prompt=False,
                                         deterministic=True)
      weights = plain_mask[..., None].astype(jnp.float32)
      features = (jnp.sum(plain.astype(jnp.float32) * weights, axis=1) /
                  jnp.maximum(jnp.sum(weights, axis=1), 1.0))  # [B, H]
      features = jax.lax.stop_gradient(features)
    prefixes = self._prefixes(deterministic, prompt_index)
    with self._adapting(deterministic):
      return self.encoder(encoder_input_tokens, features=features,
                          prompt_index=prompt_index, prefixes=prefixes,
                          deterministic=deterministic)

  def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None,
             prompt_index: Optional[Array] = None) -> Array:
    """Logits `[B, T, vocab]` for decoder inputs given the encoder output
    (`prompt_index [B]` picks each example's decoder prefix from a prefix bank)."""
    deterministic = not enable_dropout
    prefixes = self._prefixes(deterministic, prompt_index)
    with self._adapting(deterministic):
      return self.decoder(encoded, encoder_mask, decoder_input_tokens,
                          prefixes=prefixes, deterministic=deterministic,
                          decode=decode, max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None,
               enable_dropout: bool = False,
               prompt_index: Optional[Array] = None) -> Array:
    """Teacher-forced logits `[B, T_dec, vocab]` (float32).

    `decoder_target_tokens` is accepted for T5X compatibility; without packing the
    causal mask alone is exact for every non-padding target position.
    """
    del decoder_target_tokens
    encoded, encoder_mask = self.encode(encoder_input_tokens, enable_dropout,
                                        prompt_index)
    return self.decode(encoded, encoder_mask, decoder_input_tokens, enable_dropout,
                       prompt_index=prompt_index)
