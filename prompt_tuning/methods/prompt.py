"""Prompt tuning (Lester et al., 2021): a trained `[P, H]` prompt, frozen T5.

The prompt lives at `encoder/prompt/prompt` (logical axes `('prompt', 'embed')`),
is broadcast to `[B, P, H]` and combined with the embedded encoder input before
input dropout. Prompt positions are always visible; padding stays masked.

Combination modes (`combine=`):
  'prefix'     [prompt, x]                        (default, the paper's setting)
  'after_bos'  [x_0, prompt, x_1 …]              (after the first token)
  'suffix'     [x_0 … x_{L-1}, prompt, padding]  (after each example's own length L)

The combiners are plain functions so other prompt modules (LoPA, prompt banks)
reuse them.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, get_param, with_params
from prompt_tuning.models import families
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import param

Array = jax.Array
PROMPT_PATH = "encoder/prompt/prompt"  # T5; decoder-only: families.prompt_scope
PROMPT_REGEX = r".*/prompt/.*"  # the T5X prompt-tuning regex; matches PROMPT_PATH


# ---------------------------------------------------------------- combining


def _visible(prompt: Array, mask: Array, visible: Optional[Array]) -> Array:
  """[B, P] attention mask of the prompt positions: all ones unless given."""
  if visible is None:
    return jnp.ones(prompt.shape[:2], dtype=mask.dtype)
  return visible.astype(mask.dtype)


def prefix(prompt: Array, x: Array, mask: Array, visible: Optional[Array] = None
           ) -> Tuple[Array, Array]:
  """prompt [B, P, H], x [B, T, H], mask [B, T] → ([B, P+T, H], [B, P+T]).

  `visible [B, P]` masks prompt positions (a prompt bank's padding); default all.
  """
  visible = _visible(prompt, mask, visible)
  return (jnp.concatenate([prompt.astype(x.dtype), x], axis=1),
          jnp.concatenate([visible, mask], axis=1))


def after_bos(prompt: Array, x: Array, mask: Array, visible: Optional[Array] = None
              ) -> Tuple[Array, Array]:
  """The prompt after the first input token: [x_0, prompt, x_1, …]."""
  visible = _visible(prompt, mask, visible)
  return (jnp.concatenate([x[:, :1], prompt.astype(x.dtype), x[:, 1:]], axis=1),
          jnp.concatenate([mask[:, :1], visible, mask[:, 1:]], axis=1))


def suffix(prompt: Array, x: Array, mask: Array, visible: Optional[Array] = None
           ) -> Tuple[Array, Array]:
  """The prompt after each example's last non-padding token, padding moved after it.

  Inputs are padded at the end, so example b has length L_b = sum(mask[b]); output
  position j reads x[j] for j < L_b, prompt[j - L_b] for L_b <= j < L_b + P and
  x[j - P] (padding) after that — one gather over `[x, prompt]`.
  """
  length = mask.shape[1]
  num_prompt = prompt.shape[1]
  lengths = jnp.sum(mask.astype(jnp.int32), axis=1, keepdims=True)  # [B, 1]
  j = jnp.arange(length + num_prompt)[None, :]  # [1, T+P]
  in_prompt = (j >= lengths) & (j < lengths + num_prompt)
  source = jnp.where(j < lengths, j, jnp.where(in_prompt, length + j - lengths,
                                               j - num_prompt))  # [B, T+P]
  pool = jnp.concatenate([x, prompt.astype(x.dtype)], axis=1)  # [B, T+P, H]
  gathered = jnp.take_along_axis(pool, source[..., None], axis=1)
  pool_mask = jnp.concatenate([mask, _visible(prompt, mask, visible)], axis=1)
  return gathered, jnp.take_along_axis(pool_mask, source, axis=1)


COMBINERS: Dict[str, Callable[..., Tuple[Array, Array]]] = {
    "prefix": prefix,
    "after_bos": after_bos,
    "suffix": suffix,
}


def check_combine(mode: str) -> str:
  if mode not in COMBINERS:
    raise ValueError(f"Unknown prompt combination {mode!r}; choose one of "
                     f"{sorted(COMBINERS)} (gin: methods.prompt_tuning.combine).")
  return mode


def combine(mode: str, prompt: Array, x: Array, mask: Array,
            visible: Optional[Array] = None) -> Tuple[Array, Array]:
  """Combines a batched prompt `[B, P, H]` with x `[B, T, H]` by `mode`.

  `visible [B, P]` (optional) masks some prompt positions out of attention.
  """
  return COMBINERS[check_combine(mode)](prompt, x, mask, visible)


# ---------------------------------------------------------------- module


class Prompt(nn.Module):
  """The encoder-input hook of prompt tuning: one `[P, H]` prompt for every example.

  Attributes:
    length: P, the number of prompt vectors.
    combine: 'prefix' | 'after_bos' | 'suffix' (see the module docstring).
    init_minval / init_maxval: range of the uniform initializer used by
      `Module.init`; `Method.initialize` then applies the configured initializer.
  """
  length: int
  combine: str = "prefix"
  init_minval: float = -0.5
  init_maxval: float = 0.5

  needs_encoder_features = False

  @nn.compact
  def __call__(self, x: Array, mask: Array, features: Optional[Array] = None,
               prompt_index: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """x [B, T, H], mask [B, T] → ([B, T+P, H], [B, T+P])."""
    del features, prompt_index, deterministic
    init = lambda rng, shape, dtype: jax.random.uniform(
        rng, shape, dtype, self.init_minval, self.init_maxval)
    prompt = param(self, "prompt", init, (self.length, x.shape[-1]),
                   ("prompt", "embed"))
    batched = jnp.broadcast_to(prompt[None], (x.shape[0],) + prompt.shape)
    return combine(self.combine, batched, x, mask)


# ---------------------------------------------------------------- method


def standalone_params(module: nn.Module, rng: Array, config: T5Config) -> Params:
  """Parameters of a prompt-hook module initialized on its own (unboxed).

  Used by `Method.initialize` so that a frozen checkpoint without method
  parameters can be completed: the result goes under `encoder/prompt`.
  """
  x = jnp.zeros((1, 1, config.emb_dim), config.dtype)
  mask = jnp.ones((1, 1), dtype=bool)
  features = jnp.zeros((1, config.emb_dim), jnp.float32)
  variables = module.clone(parent=None).init(rng, x, mask, features=features,
                                             deterministic=True)
  return nn.unbox(variables["params"])


def initialize_prompt(initializer: inits.Initializer, length: int, rng: Array,
                      params: Params, config: T5Config) -> Array:
  """Runs `initializer` for a `[length, H]` prompt on the frozen embedding table."""
  embedding = get_param(params, families.embedding_path(config))
  return initializer(rng, (length, config.emb_dim), embedding)


def prompt_tuning(length: int = 100,
                  initializer: Optional[inits.Initializer] = None,
                  combine: str = "prefix") -> Method:  # pylint: disable=redefined-outer-name
  """Prompt tuning: train only `encoder/prompt/prompt` `[P, H]`.

  Args:
    length: P, the prompt length.
    initializer: fills the prompt from the frozen model (default:
      `initializers.random_uniform()`, U[-0.5, 0.5]).
    combine: where the prompt goes: 'prefix', 'after_bos' or 'suffix'.
  """
  if length < 1:
    raise ValueError(f"prompt_tuning needs length >= 1, got {length}.")
  if combine not in COMBINERS:
    raise ValueError(f"Unknown prompt combination {combine!r}; choose one of "
                     f"{sorted(COMBINERS)}.")
  initializer = initializer or inits.random_uniform()

  def initialize(rng: Array, params: Params, config: T5Config) -> Params:
    value = initialize_prompt(initializer, length, rng, params, config)
    return with_params(params, {f"{families.prompt_scope(config)}/prompt": value})

  def export(params: Params) -> Dict[str, np.ndarray]:
    path = f"{families.prompt_scope_in(params)}/prompt"  # PROMPT_PATH for T5
    return {path.replace("/", "."): np.asarray(get_param(params, path))}

  return Method(name="prompt", prompt=Prompt(length=length, combine=combine),
                trainable=(PROMPT_REGEX,), initialize=initialize, export=export)
