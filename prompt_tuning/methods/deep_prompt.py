"""Per-layer prompts (the official prompt-tuning code's `extended/train/per_layer.py`).

Prompt tuning's `[P, H]` prompt goes in front of the encoder input as usual
(`encoder/prompt/prompt`). Then, before every encoder layer i, the hidden states
at the P prompt positions are combined with that layer's own prompt
`encoder/layers_i/prompt/prompt` `[P, H]`:

  replace   x[:, :P] = prompt_i              (the official `replace_prompt`)
  add       x[:, :P] = x[:, :P] + prompt_i   (`add_prompt`, learned deltas)

Unlike prefix tuning (which trains keys and values directly), the per-layer prompts
pass through each layer's frozen norm and query/key/value projections and MLP.
With `replace` the input prompt is overwritten at layer 0, so it gets no gradient
(as in the official code). Decoder layers are not prompted. The per-layer prompts
enter through the `adapter` hook (`prompt_tuning/models/t5.py`), intercepting
each `EncoderLayer` call; trainable regex `.*/prompt/.*` (the T5X one) covers all.

For the other deep-prompt form, P-tuning v2 (keys and values trained directly at
every layer), see `prefix.p_tuning_v2`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, with_params
from prompt_tuning.methods.prompt import PROMPT_PATH, PROMPT_REGEX, Prompt, initialize_prompt
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import param
from prompt_tuning.models.t5 import EncoderLayer

Array = jax.Array
MODES = ("replace", "add")


class LayerPrompt(nn.Module):
  """One encoder layer's `[P, H]` prompt (lives at `…/layers_i/prompt/prompt`)."""
  length: int
  width: int
  init_minval: float = -0.5
  init_maxval: float = 0.5

  @nn.compact
  def __call__(self) -> Array:
    init = lambda rng, shape, dtype: jax.random.uniform(
        rng, shape, dtype, self.init_minval, self.init_maxval)
    return param(self, "prompt", init, (self.length, self.width), ("prompt", "embed"))


@dataclasses.dataclass(frozen=True)
class PerLayerPromptHook:
  """The `adapter` hook: combines each encoder layer's input with its prompt."""
  length: int
  mode: str = "replace"

  def __call__(self, next_fun, args, kwargs, context, *, deterministic: bool = True):
    del deterministic
    if not (isinstance(context.module, EncoderLayer) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    x = args[0]  # [B, P + T, H]; the module is created as a child of this layer
    prompt = LayerPrompt(self.length, x.shape[-1], name="prompt")().astype(x.dtype)
    head = jnp.broadcast_to(prompt[None], (x.shape[0],) + prompt.shape)  # [B, P, H]
    if self.mode == "add":
      head = x[:, :self.length] + head
    x = jnp.concatenate([head, x[:, self.length:]], axis=1)
    return next_fun(x, *args[1:], **kwargs)


def per_layer_prompt(length: int = 10, mode: str = "replace",
                     initializer: Optional[inits.Initializer] = None) -> Method:
  """Prompt tuning with a prompt per encoder layer (`replace` or `add`).

  Args:
    length: P, the prompt length (input and per layer).
    mode: 'replace' or 'add' (see the module docstring).
    initializer: fills the input prompt `encoder/prompt/prompt` (default
      U[-0.5, 0.5]); the per-layer prompts are U[-0.5, 0.5].
  """
  if length < 1:
    raise ValueError(f"per_layer_prompt needs length >= 1, got {length}.")
  if mode not in MODES:
    raise ValueError(f"Unknown per-layer prompt mode {mode!r}; choose one of {MODES}.")
  initializer = initializer or inits.random_uniform()

  def initialize(rng: Array, params: Params, config: T5Config) -> Params:
    value = initialize_prompt(initializer, length, rng, params, config)
    return with_params(params, {PROMPT_PATH: value})

  return Method(name="per_layer_prompt", prompt=Prompt(length=length, combine="prefix"),
                adapter=PerLayerPromptHook(length, mode), trainable=(PROMPT_REGEX,),
                initialize=initialize)
