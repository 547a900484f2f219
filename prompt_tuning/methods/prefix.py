"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes at every layer.

Each self-attention layer of the encoder and the decoder sees P extra key/value
positions `[P, N, D]` prepended to its own (always visible, no position bias; see
`MultiHeadAttention`). Training uses the paper's reparametrization, per stack:

  P' [P, d]  →  dense(d → k) → tanh → dense(k → L·2·N·D)  →  keys, values [L, P, N, D]

(`prefix/{encoder,decoder}/{embedding, hidden_kernel, hidden_bias, out_kernel,
out_bias}`; k = 512 and d = H by default). The output kernel is stored as
`[k, L, 2, N, D]`, so the prefix shapes are readable from the parameters alone.
After training `fold` evaluates the MLP once and the inference method holds only the
prefixes (`prefix/{encoder,decoder}/{key,value}` `[L, P, N, D]`), which is also what
is exported.

On a decoder-only model (GPT-2, Llama family) there is one stack, `decoder`, and
the prefixes have the model's key/value heads K (fewer than N with grouped-query
attention); they act as `past_key_values` (see `prompt_tuning/models/causal_lm.py`).

The prefix modules need the frozen model's config (layers, heads, head_dim): they
take it from the Transformer that adopts them, or from `config=` when used alone.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, get_param, with_params, without_params
from prompt_tuning.models import families
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import Dropout, param

Array = jax.Array
STACKS = ("encoder", "decoder")
# Logical axis names of the folded prefixes. The training parameters also use
# 'prefix_embed', 'prefix_mlp' and 'kv_pair' (replicated unless the partitioning
# rules map them).
KV_AXES = ("layers", "prompt", "heads", "kv")


def _config(module: nn.Module) -> families.ModelConfig:
  """The module's own config, else its parent's (the Transformer adopting it)."""
  if module.config is not None:
    return module.config
  parent_config = getattr(module.parent, "config", None)
  if isinstance(parent_config, (T5Config,) + families.DECODER_ONLY):
    return parent_config
  raise ValueError(f"{type(module).__name__} needs the T5Config: plug it into "
                   "Transformer(config, prefix=...) or pass config=... when using it "
                   "on its own.")


def _stacks(config) -> Tuple[str, ...]:
  """T5: both stacks; a decoder-only model: its one stack, named 'decoder'."""
  return ("decoder",) if families.is_decoder_only(config) else STACKS


def _num_layers(config, stack: str) -> int:
  if families.is_decoder_only(config):
    return config.num_layers
  return config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers


def _kv_heads(config) -> int:
  """Heads of a prefix: the key/value heads (fewer than the query heads with GQA)."""
  return config.num_kv_heads if families.is_decoder_only(config) else config.num_heads


def prefixes_from_mlp(stack_params: Params) -> Tuple[Array, Array]:
  """Evaluates one stack's reparametrization MLP → (keys, values) `[L, P, N, D]`.

  A pure function of `prefix/<stack>` parameters (no dropout), shared by the
  module and by `fold` / `export`.
  """
  p = stack_params
  hidden = jnp.tanh(p["embedding"] @ p["hidden_kernel"] + p["hidden_bias"])  # [P, k]
  out = jnp.einsum("pk,klsnd->slpnd", hidden, p["out_kernel"])  # [2, L, P, N, D]
  out = out + jnp.swapaxes(p["out_bias"], 0, 1)[:, :, None]  # bias [L, 2, N, D]
  return out[0], out[1]


class PrefixMlp(nn.Module):
  """Training-time prefix parameters of one stack (see the module docstring)."""
  length: int
  num_layers: int
  num_heads: int
  head_dim: int
  prefix_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(self) -> Tuple[Array, Array]:
    fan_in = lambda **kw: nn.initializers.variance_scaling(1.0, "fan_in", "normal", **kw)
    out_shape = (self.hidden_dim, self.num_layers, 2, self.num_heads, self.head_dim)
    params = {
        "embedding": param(self, "embedding", nn.initializers.normal(1.0),
                           (self.length, self.prefix_dim), ("prompt", "prefix_embed")),
        "hidden_kernel": param(self, "hidden_kernel", fan_in(),
                               (self.prefix_dim, self.hidden_dim),
                               ("prefix_embed", "prefix_mlp")),
        "hidden_bias": param(self, "hidden_bias", nn.initializers.zeros,
                             (self.hidden_dim,), ("prefix_mlp",)),
        "out_kernel": param(self, "out_kernel", fan_in(in_axis=0, out_axis=(1, 2, 3, 4)),
                            out_shape, ("prefix_mlp", "layers", "kv_pair", "heads", "kv")),
        "out_bias": param(self, "out_bias", nn.initializers.zeros, out_shape[1:],
                          ("layers", "kv_pair", "heads", "kv")),
    }
    return prefixes_from_mlp(params)


class Prefix(nn.Module):
  """The `prefix` hook used while training: MLP-reparametrized prefixes.

  Attributes:
    length: P, prefix positions per layer.
    hidden_dim: k, the MLP's hidden width (512 in the paper).
    prefix_dim: d, the width of P' (default: the model width H).
    dropout_rate: dropout on the produced keys/values while training.
    config: the frozen model's config; taken from the adopting Transformer if None.
  """
  length: int
  hidden_dim: int = 512
  prefix_dim: Optional[int] = None
  dropout_rate: float = 0.0
  config: Optional[T5Config] = None

  @nn.compact
  def __call__(self, deterministic: bool = True) -> Dict[str, Tuple[Array, Array]]:
    cfg = _config(self)
    out = {}
    for stack in _stacks(cfg):
      keys, values = PrefixMlp(self.length, _num_layers(cfg, stack), _kv_heads(cfg),
                               cfg.head_dim, self.prefix_dim or cfg.emb_dim,
                               self.hidden_dim, name=stack)()
      dropout = Dropout(self.dropout_rate)
      out[stack] = (dropout(keys, deterministic=deterministic),
                    dropout(values, deterministic=deterministic))
    return out


class KeyValues(nn.Module):
  """One stack's folded prefixes: `key`, `value` `[L, P, N, D]`."""
  shape: Tuple[int, int, int, int]

  @nn.compact
  def __call__(self) -> Tuple[Array, Array]:
    init = nn.initializers.normal(1.0)
    return (param(self, "key", init, self.shape, KV_AXES),
            param(self, "value", init, self.shape, KV_AXES))


class FoldedPrefix(nn.Module):
  """The `prefix` hook at inference: `prefix/{encoder,decoder}/{key,value}`."""
  length: int
  config: Optional[T5Config] = None

  @nn.compact
  def __call__(self, deterministic: bool = True) -> Dict[str, Tuple[Array, Array]]:
    del deterministic
    cfg = _config(self)
    return {stack: KeyValues((_num_layers(cfg, stack), self.length, _kv_heads(cfg),
                              cfg.head_dim), name=stack)()
            for stack in _stacks(cfg)}


def fold(params: Params) -> Params:
  """Training params → inference params: each prefix MLP replaced by its output."""
  folded = {}
  for stack in _present(params):
    keys, values = prefixes_from_mlp(get_param(params, f"prefix/{stack}"))
    folded[f"prefix/{stack}"] = {"key": keys, "value": values}
  return with_params(without_params(params, "prefix"), folded)


def export(params: Params) -> Dict[str, np.ndarray]:
  """The folded prefixes, `prefix.{encoder,decoder}.{key,value}` → `[L, P, N, D]`."""
  return export_folded(fold(params))


def export_folded(params: Params) -> Dict[str, np.ndarray]:
  """Export of folded (inference) parameters; the same names as `export`."""
  return {f"prefix.{stack}.{kind}": np.asarray(get_param(params, f"prefix/{stack}/{kind}"))
          for stack in _present(params) for kind in ("key", "value")}


def _present(params: Params) -> Tuple[str, ...]:
  """The stacks with prefixes in `params` (both for T5, 'decoder' alone for a
  decoder-only model)."""
  return tuple(s for s in STACKS if s in params.get("prefix", {}))


def prefix_tuning(length: int = 10, hidden_dim: int = 512,
                  prefix_dim: Optional[int] = None,
                  dropout_rate: float = 0.0) -> Method:
  """Prefix tuning of the encoder and decoder self-attention of a frozen T5.

  Args:
    length: P, prefix positions per layer.
    hidden_dim: k, hidden width of the reparametrization MLP (paper: 512).
    prefix_dim: d, width of the trained matrix P' (default: the model width H).
    dropout_rate: dropout on the prefixes during training (paper: 0).

  The trained method's parameters live under `prefix/…`; `Method.inference_method()`
  and `Method.inference_params(params)` give the folded, MLP-free version.
  """
  if length < 1:
    raise ValueError(f"prefix_tuning needs length >= 1, got {length}.")
  module = Prefix(length=length, hidden_dim=hidden_dim, prefix_dim=prefix_dim,
                  dropout_rate=dropout_rate)

  def initialize(rng: Array, params: Params, config: T5Config) -> Params:
    variables = module.clone(parent=None, config=config).init(rng, deterministic=True)
    return with_params(params, {"prefix": nn.unbox(variables["params"])})

  def inference() -> Method:
    return Method(name="prefix", prefix=FoldedPrefix(length=length),
                  trainable=(r"prefix/.*",), export=export_folded)

  return Method(name="prefix", prefix=module, trainable=(r"prefix/.*",),
                initialize=initialize, export=export, inference=inference, fold=fold)

