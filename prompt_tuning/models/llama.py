"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Phi-3), with parameter
paths that follow Hugging Face's `LlamaForCausalLM` names.

  model/embed_tokens/embedding                          [V, H]
  model/layers_i/input_layernorm/scale                  [H]
  model/layers_i/self_attn/q_proj/kernel                [H, N·D]  (+ bias, Qwen2)
  model/layers_i/self_attn/{k_proj,v_proj}/kernel       [H, K·D]  (+ bias, Qwen2)
  model/layers_i/self_attn/o_proj/kernel                [N·D, H]
  model/layers_i/post_attention_layernorm/scale         [H]
  model/layers_i/mlp/{gate_proj,up_proj}/kernel         [H, F]
  model/layers_i/mlp/down_proj/kernel                   [F, H]
  model/norm/scale                                      [H]
  lm_head/kernel                                        [H, V]   (absent when tied)

Kernels are HF's `Linear.weight` transposed. Phi-3's fused `qkv_proj` and
`gate_up_proj` are split into these names when a checkpoint is read. The method
hooks, positions and cache are those of `prompt_tuning.models.causal_lm`; the
prompt lives at `model/prompt/…`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.causal_lm import Backbone, CausalLM, layer_prefix
from prompt_tuning.models.decoder_config import LlamaConfig
from prompt_tuning.models.decoder_layers import (Linear, apply_rope, causal_attention,
                                                 rope_frequencies)
from prompt_tuning.models.layers import Embed, RMSNorm

Array = jax.Array
_INIT = nn.initializers.normal(0.02)


class LlamaAttention(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, slots, prefix=None, decode=False,
               deterministic=True):
    """x [B, T, H], positions [B, T] → [B, T, H]; GQA with K key/value heads."""
    cfg = self.config
    dense = lambda width, name, bias=cfg.attention_bias: Linear(
        width, ("embed", "joined_kv"), bias, cfg.dtype, _INIT, name=name)
    split = lambda a: a.reshape(a.shape[:2] + (-1, cfg.head_dim))
    query = split(dense(cfg.num_heads * cfg.head_dim, "q_proj")(x))  # [B, T, N, D]
    key = split(dense(cfg.num_kv_heads * cfg.head_dim, "k_proj")(x))  # [B, T, K, D]
    value = split(dense(cfg.num_kv_heads * cfg.head_dim, "v_proj")(x))
    # The frequencies depend on the number of positions only for 'dynamic' RoPE.
    length = slots.mask.shape[-1]
    inv_freq = rope_frequencies(cfg.rotary_dim, cfg.rope_theta, cfg.rope,
                                cfg.max_position_embeddings, length)
    query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions,
                                                                    inv_freq)
    out = causal_attention(self, query, key, value, slots,
                           scale=cfg.head_dim ** -0.5, prefix=prefix, decode=decode,
                           dropout_rate=cfg.dropout_rate, deterministic=deterministic)
    out = out.reshape(out.shape[:2] + (-1,))
    return Linear(cfg.hidden_size, ("joined_kv", "embed"), False, cfg.dtype, _INIT,
                  name="o_proj")(out)


class LlamaMlp(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    """x [B, T, H] → [B, T, H]: down(silu(gate(x)) · up(x))."""
    cfg = self.config
    dense = lambda width, axes, name: Linear(width, axes, False, cfg.dtype, _INIT,
                                             name=name)
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)
    return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(jax.nn.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, slots, prefix=None, decode=False,
               deterministic=True):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.dtype, name=name)
    x = x + LlamaAttention(cfg, name="self_attn")(
        norm("input_layernorm")(x), positions, slots, prefix, decode, deterministic)
    return x + LlamaMlp(cfg, name="mlp")(norm("post_attention_layernorm")(x))


class LlamaModel(Backbone):
  """HF's `model`: `embed_tokens`, `layers_i`, final `norm`."""
  config: LlamaConfig
  prompt: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, cfg.dtype)
    self.layers = [LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]
    self.norm = RMSNorm(cfg.rms_norm_eps, cfg.dtype)

  def embed(self, tokens):
    return self.embed_tokens(tokens)

  def sliding_window(self):
    return self.config.sliding_window

  def final_norm(self, x):
    return self.norm(x)

  def blocks(self, x, positions, slots, prefixes, decode, deterministic):
    for i, layer in enumerate(self.layers):
      x = layer(x, positions, slots, layer_prefix(prefixes, i, x.shape[0]), decode,
                deterministic)
    return x


class LlamaForCausalLM(CausalLM):
  """A Llama-family decoder with its output layer and the method hooks."""
  config: LlamaConfig
  prompt: Optional[nn.Module] = None
  prefix: Optional[nn.Module] = None
  adapter: Optional[Callable[..., Any]] = None

  def setup(self):
    prompt = self.prompt.clone(parent=None) if self.prompt is not None else None
    self.model = LlamaModel(self.config, prompt)
    if not self.config.tie_word_embeddings:
      self.lm_head = Linear(self.config.vocab_size, ("embed", "vocab"), False,
                            self.config.dtype, _INIT)

  @property
  def backbone(self):
    return self.model

  def logits(self, hidden):
    dtype = self.config.dtype
    if self.config.tie_word_embeddings:
      table = self.model.embed_tokens.embedding
      out = jnp.einsum("bth,vh->btv", hidden.astype(dtype), table.astype(dtype))
    else:
      out = self.lm_head(hidden)
    return out.astype(jnp.float32)
