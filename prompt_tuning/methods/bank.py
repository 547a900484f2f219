"""A prompt bank: K prompts served from one frozen model, mixed in one batch.

The bank is a prompt-hook module (see `prompt_tuning/models/t5.py`) holding all K
prompts as one parameter `encoder/prompt/prompts` `[K, P, H]`, logical axes
`('prompts', 'prompt', 'embed')`. Each example picks its prompt by
`prompt_index [B]` inside the compiled forward pass (a gather), so one compiled
function serves any mix of tasks:

  model = Transformer(config, prompt=bank)
  decoding.greedy_decode(model, params, tokens, max_decode_length=L,
                         prompt_index=bank.indices(['sst2', 'rte', 'sst2']))

Prompts of different lengths are LEFT-padded to the longest, P, and the padded
positions are masked out of attention (the returned encoder mask is False there,
so cross-attention ignores them too). Left padding keeps every real prompt vector
and every input token at the same relative distances as with the unpadded prompt,
so T5's relative position buckets see exactly the unpadded sequence: a short
prompt in the bank gives the outputs of that prompt alone (up to float rounding
from sums over the extra masked positions); same-length prompts are exact.

`combine` places the prompt as the single-prompt `Prompt` module of prompt tuning
does: 'prefix' (the paper's `[prompt_k, x]`, default), 'suffix' (after each
example's last token; shorter prompts are then RIGHT-padded, so the real vectors
still follow the input directly) or 'after_bos' (only for prompts of one length:
padding inside the sequence would move the input's relative positions). Serve
prompts with the combination they were trained with.

A bank is built from `[P, H]` arrays (`from_prompts`); `prompt_files.load_prompt`
reads them from `.npy` files, exports, PEFT adapters and MODEL_DIRs.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params, with_params
from prompt_tuning.models.layers import param

Array = jax.Array
PromptArray = Union[np.ndarray, Array]
PROMPTS_PATH = "encoder/prompt/prompts"


class PromptBank(nn.Module):
  """K prompts `[K, P, H]`, one chosen per example by `prompt_index [B]`.

  Attributes:
    lengths: the real length of each prompt (P = max(lengths)); shorter prompts
      are left-padded and their padding is masked.
    names: one name per prompt (default `prompt_0`, …), for `index`/`indices`.
    combine: 'prefix' | 'suffix' | 'after_bos', where the prompts go (the
      module docstring says how shorter prompts are padded).
    init_minval / init_maxval: uniform range used by `Module.init` (training a
      bank from scratch); served banks take their values from `from_prompts`.
  """
  lengths: Tuple[int, ...]
  names: Tuple[str, ...] = ()
  combine: str = "prefix"
  init_minval: float = -0.5
  init_maxval: float = 0.5

  needs_encoder_features = False

  def __post_init__(self):
    lengths = tuple(int(n) for n in self.lengths)
    if not lengths or min(lengths) < 0 or max(lengths) < 1:
      raise ValueError(f"PromptBank needs at least one prompt of length >= 1 (length "
                       f"0 marks an entry served without a prompt, e.g. a prefix-"
                       f"tuned one in a mixed batch); got lengths {lengths}.")
    names = tuple(self.names) or tuple(f"prompt_{k}" for k in range(len(lengths)))
    if len(names) != len(lengths) or len(set(names)) != len(names):
      raise ValueError(f"PromptBank needs one distinct name per prompt; got names "
                       f"{names} for {len(lengths)} lengths.")
    prompt_lib.check_combine(self.combine)
    if self.combine == "after_bos" and len(set(lengths)) > 1:
      raise ValueError(f"A prompt bank combined 'after_bos' needs prompts of one "
                       f"length (padding between the first token and the rest "
                       f"would shift relative positions); got lengths {lengths}. "
                       "Serve them in separate banks, or use 'prefix'.")
    object.__setattr__(self, "lengths", lengths)
    object.__setattr__(self, "names", names)
    super().__post_init__()

  @property
  def num_prompts(self) -> int:
    return len(self.lengths)

  @property
  def max_length(self) -> int:
    return max(self.lengths)

  def index(self, name: str) -> int:
    """The bank row of the prompt called `name`."""
    if name not in self.names:
      raise KeyError(f"No prompt named {name!r} in the bank; names: {list(self.names)}.")
    return self.names.index(name)

  def indices(self, names: Sequence[str]) -> np.ndarray:
    """`prompt_index [B]` int32 for a list of per-example prompt names."""
    return np.asarray([self.index(n) for n in names], np.int32)

  @property
  def pad_side(self) -> str:
    """Where shorter prompts are padded: 'right' for suffix prompts, else 'left'."""
    return "right" if self.combine == "suffix" else "left"

  def length_mask(self) -> np.ndarray:
    """[K, P] bool: True at real prompt positions (the last `lengths[k]`, or the
    first ones for right-padded suffix prompts)."""
    positions = np.arange(self.max_length)[None, :]
    lengths = np.asarray(self.lengths)[:, None]
    if self.pad_side == "right":
      return positions < lengths
    return positions >= self.max_length - lengths

  @nn.compact
  def __call__(self, x: Array, mask: Array, features: Optional[Array] = None,
               prompt_index: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """x [B, T, H], mask [B, T], prompt_index [B] → ([B, P+T, H], [B, P+T])."""
    del features, deterministic
    batch, _, width = x.shape
    shape = (self.num_prompts, self.max_length, width)
    if self.has_variable("params", "prompts"):
      found = tuple(self.get_variable("params", "prompts").shape)
      if found != shape:
        raise ValueError(f"{PROMPTS_PATH} has shape {list(found)}; this bank expects "
                         f"{list(shape)} (K prompts, max length P, model width H). "
                         "Build the module and its parameters together with "
                         "bank.from_prompts(...).")
    init = lambda rng, s, dtype: jax.random.uniform(rng, s, dtype, self.init_minval,
                                                    self.init_maxval)
    prompts = param(self, "prompts", init, shape, ("prompts", "prompt", "embed"))
    if prompt_index is None:
      if self.num_prompts > 1 and not self.is_initializing():
        raise ValueError(f"This PromptBank holds {self.num_prompts} prompts "
                         f"{list(self.names)}: pass prompt_index [B] (e.g. "
                         "bank.indices(names)) to encode/decode/predict.")
      prompt_index = jnp.zeros((batch,), jnp.int32)
    _check_index(prompt_index, batch, self.num_prompts)
    chosen = jnp.take(prompts, prompt_index, axis=0)  # [B, P, H]
    visible = jnp.take(jnp.asarray(self.length_mask()), prompt_index, axis=0)
    return prompt_lib.combine(self.combine, chosen, x, mask, visible)


def _check_index(prompt_index, batch: int, num_prompts: int):
  """Validates shape always, and range when the indices are concrete."""
  if jnp.shape(prompt_index) != (batch,):
    raise ValueError(f"prompt_index must be [B] = [{batch}]; got shape "
                     f"{list(jnp.shape(prompt_index))}.")
  if isinstance(prompt_index, jax.core.Tracer):
    return
  values = np.asarray(prompt_index)
  if values.size and (values.min() < 0 or values.max() >= num_prompts):
    raise ValueError(f"prompt_index values must be in [0, {num_prompts}); got "
                     f"{values.tolist()}.")


# ----------------------------------------------------------------------------
# Loading prompts and building a bank.
# ----------------------------------------------------------------------------
def stack_prompts(prompts: Sequence[np.ndarray], pad_side: str = "left"
                  ) -> Tuple[np.ndarray, Tuple[int, ...]]:
  """[P_k, H] arrays → (padded [K, max P, H] float32, lengths); `pad_side` is
  `PromptBank.pad_side`."""
  widths = {p.shape[1] for p in prompts}
  if len(widths) != 1:
    raise ValueError(f"All prompts of a bank need the same width H; got shapes "
                     f"{[list(p.shape) for p in prompts]}.")
  lengths = tuple(p.shape[0] for p in prompts)
  stacked = np.zeros((len(prompts), max(lengths), widths.pop()), np.float32)
  for k, prompt in enumerate(prompts):
    if pad_side == "right":
      stacked[k, :lengths[k]] = prompt
    else:
      stacked[k, stacked.shape[1] - lengths[k]:] = prompt
  return stacked, lengths


def _as_prompt(source: Any) -> np.ndarray:
  if isinstance(source, (str, os.PathLike)):
    raise TypeError(f"from_prompts takes [P, H] arrays; read {source} with "
                    f"prompt_tuning.prompt_files.load_prompt first.")
  array = np.asarray(source, np.float32)
  if array.ndim != 2:
    raise ValueError(f"A prompt must be [P, H]; got an array of shape "
                     f"{list(array.shape)}.")
  return array


def from_prompts(prompts: Union[Mapping[str, PromptArray], Sequence[PromptArray]],
                 combine: str = "prefix") -> Tuple[PromptBank, Dict[str, Array]]:
  """Builds a bank and its parameters from K prompts.

  Args:
    prompts: name → `[P, H]` array, or a sequence of arrays (named `prompt_<k>`).
    combine: where the prompts go ('prefix', 'suffix', 'after_bos'): the mode
      they were trained with.

  Returns:
    (the `PromptBank` module, `{'prompts': [K, P, H] float32}`): pass the module as
    `Transformer(config, prompt=bank)` and put the parameters at `encoder/prompt`
    with `with_bank(params, bank_params)`.
  """
  if isinstance(prompts, Mapping):
    names, sources = list(prompts), list(prompts.values())
  else:
    sources = list(prompts)
    names = [f"prompt_{k}" for k in range(len(sources))]
  if not sources:
    raise ValueError("from_prompts needs at least one prompt.")
  loaded = [_as_prompt(s) for s in sources]
  bank = PromptBank(lengths=tuple(p.shape[0] for p in loaded), names=tuple(names),
                    combine=combine)
  stacked, _ = stack_prompts(loaded, bank.pad_side)
  return bank, {"prompts": jnp.asarray(stacked)}


def with_bank(params: Params, bank_params: Mapping[str, Array]) -> Params:
  """A copy of the frozen `params` with the bank at `encoder/prompt` (replacing any
  single prompt that was there)."""
  return with_params(params, {"encoder/prompt": dict(bank_params)})


def bank_method(bank: PromptBank) -> Method:
  """A `Method` serving (or jointly training) the bank: trainable `encoder/prompt/…`
  (`model/prompt/…`, `transformer/prompt/…` on the decoder-only families)."""
  return Method(name="bank", prompt=bank,
                trainable=(r"(encoder|model|transformer)/prompt/.*",))
