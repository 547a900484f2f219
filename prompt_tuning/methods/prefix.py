"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes at every layer.

Each self-attention layer of the encoder and the decoder sees P extra key/value
positions `[P, N, D]` prepended to its own (always visible, no position bias; see
`MultiHeadAttention`). With `cross_attention=True` the decoder's cross-attention
gets its own prefixes too (stack `cross`, Li & Liang's BART setting). Training
uses the paper's reparametrization, per stack:

  P' [P, d]  →  dense(d → k) → tanh → dense(k → L·2·N·D)  →  keys, values [L, P, N, D]

(`prefix/{encoder,decoder}/{embedding, hidden_kernel, hidden_bias, out_kernel,
out_bias}`; k = 512 and d = H by default). The output kernel is stored as
`[k, L, 2, N, D]`, so the prefix shapes are readable from the parameters alone.
After training `fold` evaluates the MLP once and the inference method holds only the
prefixes (`prefix/{encoder,decoder}/{key,value}` `[L, P, N, D]`), which is also what
is exported.

With `reparametrize=False` the prefixes are trained directly in their folded form
(`prefix/<stack>/{key,value}`, no MLP): P-tuning v2 / "deep prompt tuning" (Liu et
al., 2022), method name `p_tuning_v2`.

Initialization from real words (`init_text=`, the paper's initialization
ablation): the frozen model reads the text's first P tokens (as encoder and as
decoder input) and each layer's key/value projections become the prefixes. The
flat form takes them as they are; the MLP form keeps its random embedding and
hidden layer and solves the output layer by least squares so that the MLP's
first output equals them (exact when k >= P).

On a decoder-only model (GPT-2, Llama family) there is one stack, `decoder`, and
the prefixes have the model's key/value heads K (fewer than N with grouped-query
attention); they act as `past_key_values` (see `prompt_tuning/models/causal_lm.py`).
Cross-attention prefixes and real-word initialization are T5-only.

The prefix modules need the frozen model's config (layers, heads, head_dim): they
take it from the Transformer that adopts them, or from `config=` when used alone.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.base import Method
from prompt_tuning.models import families, scan
from prompt_tuning.params import (Params, flatten, get_param, unflatten,
                                  with_params, without_params)
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import Dense, Dropout, param
from prompt_tuning.models.t5 import Transformer

Array = jax.Array
STACKS = ("encoder", "decoder")
ALL_STACKS = ("encoder", "decoder", "cross")  # cross: the decoder's cross-attention
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
  raise ValueError(f"{type(module).__name__} needs the model config: plug it into "
                   "the network (e.g. Transformer(config, prefix=...)) or pass "
                   "config=... when using it on its own.")


def _num_layers(config, stack: str) -> int:
  if families.is_decoder_only(config):
    return config.num_layers
  return config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers


def _kv_heads(config) -> int:
  """Heads of a prefix: the key/value heads (fewer than the query heads with GQA)."""
  return config.num_kv_heads if families.is_decoder_only(config) else config.num_heads


def _stacks_for(config, stacks: Tuple[str, ...]) -> Tuple[str, ...]:
  """The stacks to build on `config`'s model: a decoder-only model has one stack,
  'decoder' (its self-attention); cross-attention prefixes need an encoder-decoder."""
  if not families.is_decoder_only(config):
    return stacks
  if "cross" in stacks or "encoder" in stacks and "decoder" not in stacks:
    raise ValueError(f"Prefix stacks {stacks} need an encoder-decoder model; "
                     f"{type(config).__name__} is decoder-only: use prefix tuning "
                     "without cross_attention.")
  return ("decoder",)


def _stacks(cross_attention: bool) -> Tuple[str, ...]:
  return ALL_STACKS if cross_attention else STACKS


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
  stacks: Tuple[str, ...] = STACKS

  @nn.compact
  def __call__(self, deterministic: bool = True) -> Dict[str, Tuple[Array, Array]]:
    cfg = _config(self)
    out = {}
    for stack in _stacks_for(cfg, self.stacks):
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
  """The `prefix` hook holding the prefixes themselves: `prefix/<stack>/{key,value}`.

  Used at inference (after `fold`) and, with `dropout_rate`, for training the flat
  form (P-tuning v2).
  """
  length: int
  config: Optional[T5Config] = None
  stacks: Tuple[str, ...] = STACKS
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, deterministic: bool = True) -> Dict[str, Tuple[Array, Array]]:
    cfg = _config(self)
    out = {}
    for stack in _stacks_for(cfg, self.stacks):
      keys, values = KeyValues((_num_layers(cfg, stack), self.length, _kv_heads(cfg),
                                cfg.head_dim), name=stack)()
      dropout = Dropout(self.dropout_rate)
      out[stack] = (dropout(keys, deterministic=deterministic),
                    dropout(values, deterministic=deterministic))
    return out


def _present(params: Params) -> Tuple[str, ...]:
  """The stacks that have prefixes in a parameter tree, in `ALL_STACKS` order."""
  prefix = params.get("prefix", {}) if hasattr(params, "get") else {}
  return tuple(s for s in ALL_STACKS if s in prefix)


def fold(params: Params) -> Params:
  """Training params → inference params: each prefix MLP replaced by its output."""
  folded = {}
  for stack in _present(params):
    keys, values = prefixes_from_mlp(get_param(params, f"prefix/{stack}"))
    folded[f"prefix/{stack}"] = {"key": keys, "value": values}
  return with_params(without_params(params, "prefix"), folded)


def export(params: Params) -> Dict[str, np.ndarray]:
  """The folded prefixes, `prefix.<stack>.{key,value}` → `[L, P, N, D]`."""
  return export_folded(fold(params))


def export_folded(params: Params) -> Dict[str, np.ndarray]:
  """Export of folded (inference) parameters; the same names as `export`."""
  return {f"prefix.{stack}.{kind}": np.asarray(get_param(params, f"prefix/{stack}/{kind}"))
          for stack in _present(params) for kind in ("key", "value")}


# ---------------------------------------------------------------- real-word init


def word_activations(params: Params, config: T5Config, tokens: Sequence[int],
                     stacks: Sequence[str]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Each layer's keys and values when the frozen model reads `tokens` [P].

  The tokens are the encoder input and the decoder input (teacher forced);
  `cross` takes the decoder's cross-attention projections of the encoder output.
  Returns `{stack: (keys, values)}`, each `[L, P, N, D]` float32.
  """
  # Captured per layer by the T5X paths, so a scanned model runs unscanned here.
  model = Transformer(config.replace(scan_layers=False))
  ids = jnp.asarray(np.asarray(tokens, np.int32)[None])  # [1, P]
  frozen = unflatten(scan.unstack(flatten(
      {k: v for k, v in params.items() if k != "prefix"})))
  is_kv = lambda module, method: (isinstance(module, Dense) and method == "__call__"
                                  and module.name in ("key", "value"))

  @jax.jit
  def capture(p):
    _, state = model.apply({"params": p}, ids, ids, capture_intermediates=is_kv,
                           mutable=["intermediates"])
    return state["intermediates"]

  flat = flatten(jax.device_get(capture(frozen)))
  attention = {"encoder": "encoder/layers_{i}/attention",
               "decoder": "decoder/layers_{i}/self_attention",
               "cross": "decoder/layers_{i}/encoder_decoder_attention"}
  out = {}
  for stack in stacks:
    per_kind = []
    for kind in ("key", "value"):
      layers = [np.asarray(flat[f"{attention[stack].format(i=i)}/{kind}/__call__"][0][0])
                for i in range(_num_layers(config, stack))]  # each [P, N*D]
      per_kind.append(np.stack(layers).reshape(
          len(layers), len(tokens), config.num_heads, config.head_dim).astype(np.float32))
    out[stack] = (per_kind[0], per_kind[1])
  return out


def fit_mlp_output(stack_params: Params, keys: np.ndarray, values: np.ndarray
                   ) -> Dict[str, np.ndarray]:
  """`out_kernel`, `out_bias` making one stack's MLP output `(keys, values)`.

  Keeps the embedding and hidden layer; the output layer is the minimum-norm
  least-squares solution of `hidden [P, k] @ W [k, L·2·N·D] = target` (zero bias),
  exact when the hidden activations have full row rank (k >= P).
  """
  p = {k: np.asarray(v, np.float64) for k, v in stack_params.items()}
  hidden = np.tanh(p["embedding"] @ p["hidden_kernel"] + p["hidden_bias"])  # [P, k]
  target = np.stack([keys, values], axis=2)  # [L, P, 2, N, D]
  target = np.moveaxis(target, 1, 0).reshape(keys.shape[1], -1)  # [P, L*2*N*D]
  kernel, *_ = np.linalg.lstsq(hidden, target, rcond=None)  # [k, L*2*N*D]
  residual = float(np.max(np.abs(hidden @ kernel - target))) if target.size else 0.0
  if residual > 1e-3 * max(1.0, float(np.max(np.abs(target)))):
    logging.warning("Prefix MLP init from words is approximate (max error %.3g): the "
                    "hidden width k=%d is below the prefix length P=%d.", residual,
                    hidden.shape[1], hidden.shape[0])
  shape = p["out_kernel"].shape
  return {"out_kernel": kernel.reshape(shape).astype(np.float32),
          "out_bias": np.zeros(shape[1:], np.float32)}


def text_tokens(text: str, vocabulary: Any, length: int) -> Sequence[int]:
  """The first `length` token ids of `text`; refuses a text that is too short."""
  ids = list(inits.text_ids(text, vocabulary, "prefix init_text"))
  if len(ids) < length:
    raise ValueError(f"prefix init_text {text!r} has {len(ids)} tokens but the prefix "
                     f"length is {length}; give a longer text (e.g. a task "
                     "description) or a shorter prefix.")
  return ids[:length]


def prefix_tuning(length: int = 10, hidden_dim: int = 512,
                  prefix_dim: Optional[int] = None,
                  dropout_rate: float = 0.0,
                  cross_attention: bool = False,
                  reparametrize: bool = True,
                  init_text: Optional[str] = None,
                  init_vocabulary: Any = None) -> Method:
  """Prefix tuning of the attention layers of a frozen T5.

  Args:
    length: P, prefix positions per layer.
    hidden_dim: k, hidden width of the reparametrization MLP (paper: 512).
    prefix_dim: d, width of the trained matrix P' (default: the model width H).
    dropout_rate: dropout on the prefixes during training (paper: 0).
    cross_attention: also prefix the decoder's cross-attention (Li & Liang's
      BART setting: encoder, decoder and cross attention).
    reparametrize: train through the MLP (the paper); False trains the prefixes
      directly (P-tuning v2, method name `p_tuning_v2`).
    init_text: initialize from the frozen model's keys/values on this text's first
      P tokens (the paper's real-word initialization); None: random.
    init_vocabulary: vocabulary for `init_text` (an object with `encode` or a
      SentencePiece path); None: the tasks' default vocabulary.

  The trained method's parameters live under `prefix/…`; `Method.inference_method()`
  and `Method.inference_params(params)` give the folded, MLP-free version.
  """
  if length < 1:
    raise ValueError(f"prefix_tuning needs length >= 1, got {length}.")
  stacks = _stacks(cross_attention)
  if reparametrize:
    module = Prefix(length=length, hidden_dim=hidden_dim, prefix_dim=prefix_dim,
                    dropout_rate=dropout_rate, stacks=stacks)
  else:
    module = FoldedPrefix(length=length, stacks=stacks, dropout_rate=dropout_rate)
  name = "prefix" if reparametrize else "p_tuning_v2"

  def initialize(rng: Array, params: Params, config: T5Config) -> Params:
    variables = module.clone(parent=None, config=config).init(rng, deterministic=True)
    prefix = nn.unbox(variables["params"])
    if init_text is not None:
      tokens = text_tokens(init_text, init_vocabulary, length)
      activations = word_activations(params, config, tokens, stacks)
      for stack, (keys, values) in activations.items():
        if reparametrize:
          prefix[stack] = {**prefix[stack], **fit_mlp_output(prefix[stack], keys,
                                                             values)}
        else:
          prefix[stack] = {"key": keys, "value": values}
    return with_params(params, {"prefix": prefix})

  def inference() -> Method:
    return Method(name=name, prefix=FoldedPrefix(length=length, stacks=stacks),
                  trainable=(r"prefix/.*",), export=export_folded)

  if not reparametrize:
    return Method(name=name, prefix=module, trainable=(r"prefix/.*",),
                  initialize=initialize, export=export_folded, inference=inference)
  return Method(name=name, prefix=module, trainable=(r"prefix/.*",),
                initialize=initialize, export=export, inference=inference, fold=fold)


def p_tuning_v2(length: int = 10, dropout_rate: float = 0.0,
                cross_attention: bool = False, init_text: Optional[str] = None,
                init_vocabulary: Any = None) -> Method:
  """P-tuning v2 / flat prefix: `prefix_tuning(reparametrize=False, ...)`."""
  return prefix_tuning(length=length, dropout_rate=dropout_rate,
                       cross_attention=cross_attention, reparametrize=False,
                       init_text=init_text, init_vocabulary=init_vocabulary)
