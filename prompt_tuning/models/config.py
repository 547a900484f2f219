"""The one frozen configuration dataclass of the T5.1.1 network, with named presets.

Gin binds this dataclass (e.g. `configs/models/t5_1_1_base.gin` binds
`T5Config.preset` or its fields), never the individual layers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import jax.numpy as jnp

T5_VOCAB_SIZE = 32128  # 32,000 SentencePiece pieces + 100 extra ids, padded to 128.
MT5_VOCAB_SIZE = 250112
REMAT_POLICIES = ("none", "minimal", "full")
_LATER_DEFAULTS = {"remat_policy": "none", "frozen_dtype": "float32",
                   "scan_layers": False}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5.1.1 encoder-decoder.

  Attributes:
    vocab_size: rows of the input embedding table and columns of the logits.
    emb_dim: H, the model width (T5's d_model).
    num_heads: attention heads per layer.
    head_dim: width of one head (T5's d_kv); num_heads * head_dim need not be H.
    mlp_dim: hidden width of the gated-GELU MLP (T5's d_ff).
    num_encoder_layers / num_decoder_layers: stack depths.
    relative_attention_num_buckets / relative_attention_max_distance: T5's
      bucketed relative position bias, one table per stack shared by its layers.
    dropout_rate: used only when `enable_dropout=True`.
    dtype: activation dtype (`bfloat16` on accelerators); params stay `float32`.
    layer_norm_epsilon: RMS norm epsilon.
    remat_policy: per-layer rematerialization of the encoder and decoder layers
      (T5X / flaxformer `layer_remat`): 'none' keeps every activation for the
      backward pass; 'minimal' keeps only the matmul outputs without batch
      dimensions (`jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims`) and
      recomputes the rest; 'full' keeps only each layer's inputs and recomputes the
      whole layer. Same loss and gradients, less memory, more compute.
    frozen_dtype: dtype the frozen parameters are loaded, placed and kept in
      (`bfloat16` halves their memory on host and device); trainable parameters
      and optimizer state stay float32 whatever this says.
    scan_layers: run each stack's layers with `nn.scan` (T5X / flaxformer
      `scan_layers`): one compiled layer per stack, parameters stacked on a
      leading `layers` axis (`encoder/layers/…` `[L, …]`, see `models/scan.py`).
      Checkpoints and exports keep the unstacked T5X paths (stacked on load).
      Composes with `remat_policy`; the adapter hook (LoRA, IA3, deep prompts)
      and cached decoding are refused with it (eval and infer run unscanned).
  """
  vocab_size: int = T5_VOCAB_SIZE
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  layer_norm_epsilon: float = 1e-6
  remat_policy: str = "none"
  frozen_dtype: Any = jnp.float32
  scan_layers: bool = False

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"T5Config.remat_policy={self.remat_policy!r}; choose one of "
                       f"{REMAT_POLICIES} (e.g. --gin.t5_preset.remat_policy='full').")
    for name in ("dtype", "frozen_dtype"):  # gin and config.json give names
      value = getattr(self, name)
      if isinstance(value, str):
        object.__setattr__(self, name, jnp.dtype(value).type)

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> Dict[str, Any]:
    out = dataclasses.asdict(self)
    out["dtype"] = jnp.dtype(self.dtype).name
    out["frozen_dtype"] = jnp.dtype(self.frozen_dtype).name
    # Fields added later are left out at their defaults, so the config.json of a
    # run made before them still matches (runs refuse a different model_config).
    for name, default in _LATER_DEFAULTS.items():
      if out[name] == default:
        del out[name]
    return out

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> "T5Config":
    values = dict(values)
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"Unknown T5Config fields {sorted(unknown)}; known fields are "
                       f"{[f.name for f in dataclasses.fields(cls)]}.")
    return cls(**values)


def _t5_1_1(emb_dim, num_heads, mlp_dim, num_layers, vocab_size=T5_VOCAB_SIZE):
  return T5Config(vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads,
                  head_dim=64, mlp_dim=mlp_dim, num_encoder_layers=num_layers,
                  num_decoder_layers=num_layers)


# T5 1.1 sizes as in the released (LM-adapted) checkpoints.
PRESETS: Dict[str, T5Config] = {
    # A few-thousand-parameter-per-layer model for tests; the real vocabulary.
    "tiny": T5Config(emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                     num_encoder_layers=2, num_decoder_layers=2,
                     relative_attention_num_buckets=32,
                     relative_attention_max_distance=128),
    "small": _t5_1_1(512, 6, 1024, 8),
    "base": _t5_1_1(768, 12, 2048, 12),
    "large": _t5_1_1(1024, 16, 2816, 24),
    "xl": _t5_1_1(2048, 32, 5120, 24),
    "xxl": _t5_1_1(4096, 64, 10240, 24),
}
# mT5 shares the T5 1.1 architecture with a 250,112-row vocabulary.
for _name in ("small", "base", "large", "xl", "xxl"):
  PRESETS[f"mt5_{_name}"] = PRESETS[_name].replace(vocab_size=MT5_VOCAB_SIZE)


def preset(name: str, **overrides) -> T5Config:
  """Returns the named preset (`tiny`, `small`, …, `xxl`, `mt5_base`, …)."""
  if name not in PRESETS:
    raise ValueError(f"Unknown T5 preset {name!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[name].replace(**overrides)
