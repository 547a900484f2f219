"""Frozen configuration dataclasses of the decoder-only families, with named presets.

  GPT2Config   GPT-2 (learned positions, LayerNorm with biases, GELU MLP, tied head)
  LlamaConfig  the Llama family: Llama 2/3, Mistral, Qwen2 and Phi-3 are all this
               network (RoPE, RMSNorm, SwiGLU, grouped-query attention); they differ
               only in sizes and the few switches below.

As with `T5Config`, gin binds the dataclass (a preset or its fields), never the
layers. `family` names the network a config builds (`prompt_tuning.models.build`).
Preset sizes follow the published `config.json` of each model; tests check their
parameter counts (`jax.eval_shape`) against the published totals.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


class _ConfigMixin:
  """replace / to_dict / from_dict shared by the decoder-only configs."""

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> Dict[str, Any]:
    out = dataclasses.asdict(self)
    out["dtype"] = jnp.dtype(self.dtype).name
    out["frozen_dtype"] = jnp.dtype(self.frozen_dtype).name
    out["family"] = self.family
    return out

  @classmethod
  def from_dict(cls, values: Dict[str, Any]):
    values = dict(values)
    family = values.pop("family", cls.family)
    if family != cls.family:
      raise ValueError(f"{cls.__name__}.from_dict got a {family!r} config; use the "
                       f"dataclass of that family.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"Unknown {cls.__name__} fields {sorted(unknown)}; known "
                       f"fields are {sorted(known)}.")
    for name in ("dtype", "frozen_dtype"):  # config.json records names
      if isinstance(values.get(name), str):
        values[name] = jnp.dtype(values[name]).type
    if isinstance(values.get("rope_scaling"), dict):
      values["rope_scaling"] = tuple(sorted(values["rope_scaling"].items()))
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class GPT2Config(_ConfigMixin):
  """Hyperparameters of GPT-2 (names as in transformers' `GPT2Config`).

  Attributes:
    vocab_size: rows of the (tied) token embedding `wte` and columns of the logits.
    n_positions: rows of the learned position table `wpe` (longest sequence).
    n_embd: H, the model width.
    n_layer / n_head: depth and attention heads (head_dim = H / n_head).
    n_inner: MLP width (None: 4 H).
    layer_norm_epsilon: LayerNorm epsilon.
    dropout_rate: residual, embedding and attention dropout while training.
    scale_attn_by_inverse_layer_idx: also divide layer i's attention logits by i + 1.
    dtype: activation dtype; trained parameters stay float32.
    frozen_dtype: dtype the frozen parameters are loaded and kept in (e.g. bfloat16
      halves their memory; `prompt_tuning.building`).
    bos_token_id: the token fed before the first input token (the start of the
      shifted-right sequence and of every served row): the pretrained tokenizer's
      BOS in the presets of released models, 0 for random test models.
  """
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: Optional[int] = None
  layer_norm_epsilon: float = 1e-5
  dropout_rate: float = 0.1
  scale_attn_by_inverse_layer_idx: bool = False
  dtype: Any = jnp.float32
  frozen_dtype: Any = jnp.float32
  bos_token_id: int = 0

  family = "gpt2"

  def __post_init__(self):
    if self.n_embd % self.n_head:
      raise ValueError(f"GPT2Config: n_embd={self.n_embd} is not a multiple of "
                       f"n_head={self.n_head}.")

  # The names the shared decoder code and the methods read.
  @property
  def emb_dim(self) -> int:
    return self.n_embd

  @property
  def num_layers(self) -> int:
    return self.n_layer

  @property
  def num_heads(self) -> int:
    return self.n_head

  @property
  def num_kv_heads(self) -> int:
    return self.n_head

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def mlp_dim(self) -> int:
    return self.n_inner or 4 * self.n_embd


@dataclasses.dataclass(frozen=True)
class LlamaConfig(_ConfigMixin):
  """Hyperparameters of a Llama-family decoder (names as in transformers).

  Attributes:
    vocab_size, hidden_size (H), intermediate_size (SwiGLU width),
    num_hidden_layers, num_attention_heads (N), num_key_value_heads (K, divides
      N; K < N is grouped-query attention).
    head_dim: D (None: H / N).
    max_position_embeddings: the trained context; `dynamic` RoPE stretches past it.
    rms_norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base.
    rope_scaling: None or `(key, value)` pairs of transformers' `rope_scaling`
      (a tuple so the config stays hashable): `rope_type` in 'linear' / 'dynamic'
      (with `factor`) or 'llama3' (with `factor`, `low_freq_factor`,
      `high_freq_factor`, `original_max_position_embeddings`).
    partial_rotary_factor: the fraction of each head that is rotated (Phi-3: 1.0).
    attention_bias: biases on q/k/v (Qwen2).
    sliding_window: None, or each query sees only the last `sliding_window`
      positions including itself (Mistral v0.1).
    tie_word_embeddings: the output layer is the token embedding (no `lm_head`).
    dropout_rate: attention dropout while training (0 in all released models).
    dtype: activation dtype; trained parameters stay float32.
    frozen_dtype: dtype the frozen parameters are loaded and kept in (e.g. bfloat16
      halves their memory; `prompt_tuning.building`).
    bos_token_id: the token fed before the first input token (the start of the
      shifted-right sequence and of every served row): the pretrained tokenizer's
      BOS in the presets of released models, 0 for random test models.
  """
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim_override: Optional[int] = None
  max_position_embeddings: int = 4096
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: Optional[Tuple[Tuple[str, Any], ...]] = None
  partial_rotary_factor: float = 1.0
  attention_bias: bool = False
  sliding_window: Optional[int] = None
  tie_word_embeddings: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  frozen_dtype: Any = jnp.float32
  bos_token_id: int = 0

  family = "llama"

  def __post_init__(self):
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"LlamaConfig: num_attention_heads={self.num_attention_heads}"
                       f" is not a multiple of num_key_value_heads="
                       f"{self.num_key_value_heads}.")
    if self.head_dim_override is None and self.hidden_size % self.num_attention_heads:
      raise ValueError(f"LlamaConfig: hidden_size={self.hidden_size} is not a "
                       f"multiple of num_attention_heads={self.num_attention_heads};"
                       " set head_dim_override.")
    if self.rotary_dim % 2:
      raise ValueError(f"LlamaConfig: the rotated part of a head ({self.rotary_dim} ="
                       f" {self.head_dim} x {self.partial_rotary_factor}) must be even.")
    rope_type = self.rope.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"LlamaConfig: rope_type {rope_type!r} is not supported; "
                       f"supported: {list(ROPE_TYPES)}.")

  @property
  def rope(self) -> Dict[str, Any]:
    return dict(self.rope_scaling or ())

  @property
  def emb_dim(self) -> int:
    return self.hidden_size

  @property
  def num_layers(self) -> int:
    return self.num_hidden_layers

  @property
  def num_heads(self) -> int:
    return self.num_attention_heads

  @property
  def num_kv_heads(self) -> int:
    return self.num_key_value_heads

  @property
  def head_dim(self) -> int:
    return self.head_dim_override or self.hidden_size // self.num_attention_heads

  @property
  def mlp_dim(self) -> int:
    return self.intermediate_size

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.partial_rotary_factor)


def _llama3_rope(factor: float, original: int) -> Tuple[Tuple[str, Any], ...]:
  return (("factor", factor), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
          ("original_max_position_embeddings", original), ("rope_type", "llama3"))


GPT2_PRESETS: Dict[str, GPT2Config] = {
    # For tests: a few thousand parameters per layer, a small vocabulary.
    "tiny": GPT2Config(vocab_size=512, n_positions=128, n_embd=32, n_layer=2, n_head=4),
    "small": GPT2Config(bos_token_id=50256),  # <|endoftext|>
    "medium": GPT2Config(bos_token_id=50256, n_embd=1024, n_layer=24, n_head=16),
    "large": GPT2Config(bos_token_id=50256, n_embd=1280, n_layer=36, n_head=20),
    "xl": GPT2Config(bos_token_id=50256, n_embd=1600, n_layer=48, n_head=25),
}

LLAMA_PRESETS: Dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256),
    "llama2_7b": LlamaConfig(bos_token_id=1),
    "llama2_13b": LlamaConfig(bos_token_id=1, hidden_size=5120, intermediate_size=13824,
                              num_hidden_layers=40, num_attention_heads=40,
                              num_key_value_heads=40),
    "llama3_8b": LlamaConfig(bos_token_id=128000, vocab_size=128256, hidden_size=4096,
                             intermediate_size=14336, num_key_value_heads=8,
                             max_position_embeddings=8192, rope_theta=500000.0),
    "llama3_1_8b": LlamaConfig(bos_token_id=128000, vocab_size=128256, intermediate_size=14336,
                               num_key_value_heads=8, max_position_embeddings=131072,
                               rope_theta=500000.0,
                               rope_scaling=_llama3_rope(8.0, 8192)),
    "llama3_2_1b": LlamaConfig(bos_token_id=128000, vocab_size=128256, hidden_size=2048,
                               intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, num_key_value_heads=8,
                               max_position_embeddings=131072, rope_theta=500000.0,
                               rope_scaling=_llama3_rope(32.0, 8192),
                               tie_word_embeddings=True),
    "mistral_7b": LlamaConfig(bos_token_id=1, hidden_size=4096, intermediate_size=14336,
                              num_key_value_heads=8, max_position_embeddings=32768,
                              sliding_window=4096),
    "mistral_7b_v0_3": LlamaConfig(bos_token_id=1, vocab_size=32768, intermediate_size=14336,
                                   num_key_value_heads=8,
                                   max_position_embeddings=32768,
                                   rope_theta=1000000.0),
    "qwen2_0_5b": LlamaConfig(bos_token_id=151643, vocab_size=151936, hidden_size=896,
                              intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2,
                              max_position_embeddings=131072, rms_norm_eps=1e-6,
                              rope_theta=1000000.0, attention_bias=True,
                              tie_word_embeddings=True),
    "qwen2_7b": LlamaConfig(bos_token_id=151643, vocab_size=152064, hidden_size=3584,
                            intermediate_size=18944, num_hidden_layers=28,
                            num_attention_heads=28, num_key_value_heads=4,
                            max_position_embeddings=131072, rms_norm_eps=1e-6,
                            rope_theta=1000000.0, attention_bias=True),
    "phi3_mini": LlamaConfig(bos_token_id=1, vocab_size=32064, hidden_size=3072,
                             intermediate_size=8192, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32,
                             rms_norm_eps=1e-5, sliding_window=2047),
}


def gpt2_preset(name: str, **overrides) -> GPT2Config:
  """The named GPT-2 preset (`tiny`, `small`, `medium`, `large`, `xl`)."""
  if name not in GPT2_PRESETS:
    raise ValueError(f"Unknown GPT-2 preset {name!r}; choose one of "
                     f"{sorted(GPT2_PRESETS)}.")
  return GPT2_PRESETS[name].replace(**overrides)


def llama_preset(name: str, **overrides) -> LlamaConfig:
  """The named Llama-family preset (`tiny`, `llama3_8b`, `qwen2_7b`, …)."""
  if name not in LLAMA_PRESETS:
    raise ValueError(f"Unknown Llama-family preset {name!r}; choose one of "
                     f"{sorted(LLAMA_PRESETS)}.")
  return LLAMA_PRESETS[name].replace(**overrides)
