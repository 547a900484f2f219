"""GPT-2 with parameter paths that follow Hugging Face's `GPT2LMHeadModel` names.

  transformer/wte/embedding                  [V, H]    (also the output layer)
  transformer/wpe/embedding                  [n_positions, H]
  transformer/h_i/ln_1/{scale,bias}          [H]
  transformer/h_i/attn/c_attn/kernel         [H, 3, H]  (q, k, v; HF [H, 3H])
  transformer/h_i/attn/c_attn/bias           [3, H]
  transformer/h_i/attn/c_proj/{kernel,bias}  [H, H], [H]
  transformer/h_i/ln_2/{scale,bias}          [H]
  transformer/h_i/mlp/c_fc/{kernel,bias}     [H, F], [F]
  transformer/h_i/mlp/c_proj/{kernel,bias}   [F, H], [H]
  transformer/ln_f/{scale,bias}              [H]

HF stores GPT-2's `Conv1D` weights as `[in, out]`, so kernels map without a
transpose. The method hooks, positions and cache are those of
`prompt_tuning.models.causal_lm`; the prompt lives at `transformer/prompt/…`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.causal_lm import Backbone, CausalLM, layer_prefix
from prompt_tuning.models.decoder_config import GPT2Config
from prompt_tuning.models.decoder_layers import LayerNorm, Linear, causal_attention
from prompt_tuning.models.layers import Dropout, param

Array = jax.Array
_INIT = nn.initializers.normal(0.02)


class GPT2Attention(nn.Module):
  config: GPT2Config
  layer: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, slots, prefix=None, decode=False,
               deterministic=True):
    """x [B, T, H] → [B, T, H]; positions are unused (GPT-2 adds them at the input)."""
    del positions
    cfg = self.config
    width, heads = cfg.n_embd, cfg.n_head
    c_attn = _FusedQkv(width, self.dtype, name="c_attn")(x)  # [B, T, 3, H]
    split = lambda a: a.reshape(a.shape[:2] + (heads, cfg.head_dim))
    query, key, value = (split(c_attn[:, :, i]) for i in range(3))
    scale = cfg.head_dim ** -0.5
    if cfg.scale_attn_by_inverse_layer_idx:
      scale /= self.layer + 1
    out = causal_attention(self, query, key, value, slots, scale=scale,
                           prefix=prefix, decode=decode,
                           dropout_rate=cfg.dropout_rate, deterministic=deterministic)
    out = out.reshape(out.shape[:2] + (width,))
    out = Linear(width, ("joined_kv", "embed"), True, self.dtype, _INIT,
                 name="c_proj")(out)
    return Dropout(cfg.dropout_rate)(out, deterministic=deterministic)


class _FusedQkv(nn.Module):
  """HF's `c_attn`: one `[H, 3, N·D]` kernel and `[3, N·D]` bias for q, k, v."""
  width: int
  dtype: jnp.dtype = jnp.float32
  kernel_axes = ("embed", "qkv", "joined_kv")  # read by the adapter hooks

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x [B, T, H] → [B, T, 3, N·D]."""
    kernel = param(self, "kernel", _INIT, (x.shape[-1], 3, self.width),
                   self.kernel_axes)
    bias = param(self, "bias", nn.initializers.zeros, (3, self.width),
                 ("qkv", "joined_kv"))
    y = jnp.einsum("bth,hcf->btcf", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class GPT2Mlp(nn.Module):
  config: GPT2Config
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    """x [B, T, H] → [B, T, H]: c_proj(gelu_tanh(c_fc(x)))."""
    cfg = self.config
    h = Linear(cfg.mlp_dim, ("embed", "mlp"), True, self.dtype, _INIT, name="c_fc")(x)
    h = jax.nn.gelu(h, approximate=True)
    h = Linear(cfg.n_embd, ("mlp", "embed"), True, self.dtype, _INIT, name="c_proj")(h)
    return Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
  config: GPT2Config
  layer: int

  @nn.compact
  def __call__(self, x, positions, slots, prefix=None, decode=False,
               deterministic=True):
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name=name)
    x = x + GPT2Attention(cfg, self.layer, cfg.dtype, name="attn")(
        norm("ln_1")(x), positions, slots, prefix, decode, deterministic)
    return x + GPT2Mlp(cfg, cfg.dtype, name="mlp")(norm("ln_2")(x), deterministic)


class GPT2Model(Backbone):
  """HF's `transformer`: embeddings, blocks `h_i`, final `ln_f`."""
  config: GPT2Config
  prompt: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.wte = _Table(cfg.vocab_size, cfg.n_embd, ("vocab", "embed"), cfg.dtype)
    self.wpe = _Table(cfg.n_positions, cfg.n_embd, ("positions", "embed"), cfg.dtype,
                      stddev=0.01)
    self.h = [GPT2Block(cfg, i) for i in range(cfg.n_layer)]
    self.ln_f = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype)
    self.drop = Dropout(cfg.dropout_rate)

  def embed(self, tokens):
    return self.wte(tokens)

  def max_positions(self):
    return self.config.n_positions

  def final_norm(self, x):
    return self.ln_f(x)

  def blocks(self, x, positions, slots, prefixes, decode, deterministic):
    x = x + self.wpe(positions)
    x = self.drop(x, deterministic=deterministic)
    for i, block in enumerate(self.h):
      x = block(x, positions, slots, layer_prefix(prefixes, i, x.shape[0]), decode,
                deterministic)
    return x


class _Table(nn.Module):
  """An embedding table `[rows, H]` (`embedding`), looked up by integer ids."""
  rows: int
  features: int
  axes: tuple
  dtype: jnp.dtype = jnp.float32
  stddev: float = 0.02

  def setup(self):
    self.embedding = param(self, "embedding", nn.initializers.normal(self.stddev),
                           (self.rows, self.features), self.axes)

  def __call__(self, ids: Array) -> Array:
    """ids [B, T] → [B, T, H]."""
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)


class GPT2LMHeadModel(CausalLM):
  """GPT-2 with the tied output layer (`logits = h @ wteᵀ`) and the method hooks."""
  config: GPT2Config
  prompt: Optional[nn.Module] = None
  prefix: Optional[nn.Module] = None
  adapter: Optional[Callable[..., Any]] = None

  def setup(self):
    # The prompt must live at `transformer/prompt/…`: hand the backbone a detached
    # copy (as t5.Transformer does for its encoder).
    prompt = self.prompt.clone(parent=None) if self.prompt is not None else None
    self.transformer = GPT2Model(self.config, prompt)

  @property
  def backbone(self):
    return self.transformer

  def logits(self, hidden):
    dtype = self.config.dtype
    table = self.transformer.wte.embedding
    return jnp.einsum("bth,vh->btv", hidden.astype(dtype),
                      table.astype(dtype)).astype(jnp.float32)
