"""LoPA, low-rank prompt adaptation (Jain et al., 2024): an instance-aware prompt.

For each example the prompt is

  Z = Z_S ⊙ σ(u vᵀ),   u = f_u(x) [P, r],   v = f_v(x) [H, r]

with Z_S `[P, H]` shared by the task (at `encoder/prompt/prompt`, so the prompt
initializers and the `.*/prompt/.*` regex apply) and u, v computed from a pooled
representation x `[B, H]` of the input by two heads `dropout → dense → tanh →
dense` (`encoder/prompt/{u_head,v_head}/…`). Z then enters like a prompt-tuning
prompt (prefix by default).

Pooled representation (`features=`):
  'encoder'     mean over non-padding tokens of the frozen T5 encoder run on the
                un-prompted input (the model computes it when
                `needs_encoder_features` is True; the paper's frozen encoder)
  'embeddings'  mean of the input token embeddings (cheaper: no extra encoder pass)

Ablation variants of how Z_S and Z_I = u vᵀ combine (`variant=`):
  'gate' Z_S ⊙ σ(Z_I) (the paper)   'add' Z_S + Z_I   'max' max(Z_S, Z_I)
  'concat' [Z_S; Z_I] along the prompt axis (2P prompt vectors)
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, with_params
from prompt_tuning.models import families
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import Dropout, param

Array = jax.Array
FEATURES = ("encoder", "embeddings")
VARIANTS = ("gate", "add", "max", "concat")
# Telemetry: a gate below GATE_EDGE or above 1 - GATE_EDGE is saturated. The gate
# variant sows the saturated shares (`gate_near_0`, `gate_near_1`) into the
# `intermediates` collection; they cost nothing unless that collection is mutable.
GATE_EDGE = 0.05


class Head(nn.Module):
  """dropout → dense(H → hidden) → tanh → dense(hidden → out); biases included.

  Weights ~ N(0, 0.02²), output bias zero, as in the LoPA reference code.
  """
  hidden_dim: int
  out_dim: int
  dropout_rate: float
  out_axis: str

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    """x [B, H] → [B, out_dim]."""
    init = nn.initializers.normal(0.02)
    zeros = nn.initializers.zeros
    x = Dropout(self.dropout_rate)(x, deterministic=deterministic)
    w1 = param(self, "hidden_kernel", init, (x.shape[-1], self.hidden_dim),
               ("embed", "lopa_hidden"))
    b1 = param(self, "hidden_bias", zeros, (self.hidden_dim,), ("lopa_hidden",))
    w2 = param(self, "out_kernel", init, (self.hidden_dim, self.out_dim),
               ("lopa_hidden", self.out_axis))
    b2 = param(self, "out_bias", zeros, (self.out_dim,), (self.out_axis,))
    h = jnp.tanh(x.astype(jnp.float32) @ w1 + b1)
    return h @ w2 + b2


class LopaPrompt(nn.Module):
  """The encoder-input hook of LoPA (see the module docstring for the fields)."""
  length: int
  rank: int = 4
  hidden_dim: int = 256
  dropout_rate: float = 0.1
  features: str = "encoder"
  variant: str = "gate"
  combine: str = "prefix"

  @property
  def needs_encoder_features(self) -> bool:
    return self.features == "encoder"

  @property
  def out_length(self) -> int:
    """P', the number of prompt vectors it adds (2P for 'concat')."""
    return 2 * self.length if self.variant == "concat" else self.length

  def __call__(self, x: Array, mask: Array, features: Optional[Array] = None,
               prompt_index: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """x [B, T, H], mask [B, T], features [B, H] → ([B, T+P', H], [B, T+P'])."""
    del prompt_index
    prompt = self.vectors(x, mask, features, deterministic)
    return prompt_lib.combine(self.combine, prompt, x, mask)

  @nn.compact
  def vectors(self, x: Array, mask: Array, features: Optional[Array] = None,
              deterministic: bool = True) -> Array:
    """Each example's prompt Z `[B, P', H]` (x [B, T, H], mask [B, T], features
    [B, H]); a prompt bank places it (`methods/lopa_bank.py`)."""
    batch, _, width = x.shape
    if self.features == "embeddings" or features is None:
      if self.features == "encoder":
        raise ValueError("LoPA with features='encoder' needs the pooled encoder output; "
                         "use it inside Transformer (which sets `features`) or choose "
                         "features='embeddings'.")
      weights = mask[..., None].astype(jnp.float32)
      features = (jnp.sum(x.astype(jnp.float32) * weights, axis=1) /
                  jnp.maximum(jnp.sum(weights, axis=1), 1.0))
      features = jax.lax.stop_gradient(features)  # [B, H]
    shared = param(self, "prompt",
                   lambda rng, shape, dtype: jax.random.uniform(rng, shape, dtype, -0.5, 0.5),
                   (self.length, width), ("prompt", "embed"))  # Z_S [P, H]
    head = lambda name, out, axis: Head(self.hidden_dim, out, self.dropout_rate, axis,
                                        name=name)(features, deterministic)
    u = head("u_head", self.length * self.rank, "lopa_out").reshape(
        batch, self.length, self.rank)
    v = head("v_head", width * self.rank, "lopa_out").reshape(batch, width, self.rank)
    instance = jnp.einsum("bpr,bhr->bph", u, v)  # Z_I [B, P, H]
    shared = jnp.broadcast_to(shared[None], instance.shape)
    if self.variant == "gate":
      gate = jax.nn.sigmoid(instance)  # [B, P, H]
      self.sow("intermediates", "gate_near_0", jnp.mean(gate < GATE_EDGE))
      self.sow("intermediates", "gate_near_1", jnp.mean(gate > 1 - GATE_EDGE))
      prompt = shared * gate
    elif self.variant == "add":
      prompt = shared + instance
    elif self.variant == "max":
      prompt = jnp.maximum(shared, instance)
    else:  # concat
      prompt = jnp.concatenate([shared, instance], axis=1)
    return prompt


def lopa(length: int = 10, rank: int = 4, hidden_dim: int = 256,
         dropout_rate: float = 0.1, features: str = "encoder", variant: str = "gate",
         initializer: Optional[inits.Initializer] = None,
         combine: str = "prefix") -> Method:
  """LoPA: train Z_S and the two heads under `encoder/prompt/…`.

  Args:
    length: P, the number of soft-prompt vectors (paper default 10).
    rank: r, rank of the instance-specific component u vᵀ (paper default 4 for NLU).
    hidden_dim: hidden width of each head.
    dropout_rate: dropout before each head while training.
    features: 'encoder' (frozen T5 encoder, mean-pooled) or 'embeddings'.
    variant: 'gate' (paper), 'add', 'max' or 'concat'.
    initializer: for Z_S (default U[-0.5, 0.5]); the prompt initializers apply.
    combine: where the prompt goes ('prefix', 'after_bos', 'suffix').
  """
  if features not in FEATURES:
    raise ValueError(f"Unknown LoPA features {features!r}; choose one of {FEATURES}.")
  if variant not in VARIANTS:
    raise ValueError(f"Unknown LoPA variant {variant!r}; choose one of {VARIANTS}.")
  if combine not in prompt_lib.COMBINERS:
    raise ValueError(f"Unknown prompt combination {combine!r}; choose one of "
                     f"{sorted(prompt_lib.COMBINERS)}.")
  if length < 1 or rank < 1:
    raise ValueError(f"LoPA needs length >= 1 and rank >= 1; got {length}, {rank}.")
  initializer = initializer or inits.random_uniform()
  module = LopaPrompt(length=length, rank=rank, hidden_dim=hidden_dim,
                      dropout_rate=dropout_rate, features=features, variant=variant,
                      combine=combine)

  def initialize(rng: Array, params: Params, config: T5Config) -> Params:
    head_rng, prompt_rng = jax.random.split(rng)
    own = prompt_lib.standalone_params(module, head_rng, config)
    own["prompt"] = prompt_lib.initialize_prompt(initializer, length, prompt_rng,
                                                 params, config)
    return with_params(params, {families.prompt_scope(config): own})

  # `.*/prompt/.*`: encoder/prompt/… on T5, model/ or transformer/prompt/… on the
  # decoder-only families.
  return Method(name="lopa", prompt=module, trainable=(prompt_lib.PROMPT_REGEX,),
                initialize=initialize)
