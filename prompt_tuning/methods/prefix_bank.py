"""A prefix bank: K prefix-tuned runs (and plain prompts) served in one batch.

The prefix hook (see `prompt_tuning/models/t5.py`) of a frozen T5 holding K folded
prefixes per stack, `prefix/{encoder,decoder}/{key,value}` `[K, L, P, N, D]`
(logical axes `('prompts', 'layers', 'prompt', 'heads', 'kv')`). Each example
picks its row with the same `prompt_index [B]` that picks its prompt from a
`PromptBank`, inside the compiled forward pass:

  prompts, prefixes, params = mixed_banks(frozen, {'rte': prompt [P, H]},
                                          {'sst2': prefix_export})
  model = Transformer(config, prompt=prompts, prefix=prefixes)
  model.apply({'params': params}, tokens, decoder_inputs,
              prompt_index=prompts.indices(['sst2', 'rte']))

Shorter prefixes are padded to the longest, P, and the padding is hidden from
attention (`visible [B, P]`); prefix positions carry no position bias, so a
padded prefix attends exactly as the unpadded one. An entry of length 0 has no
prefix (a plain prompt's row); a plain-prompt bank gives prefix rows length 0 in
the same way, so every example sees only its own method's parameters.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import prefix as prefix_lib
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import param
from prompt_tuning.params import Params, with_params, without_params

Array = jax.Array
BANK_AXES = ("prompts",) + prefix_lib.KV_AXES


class BankKeyValues(nn.Module):
  """One stack's banked prefixes: `key`, `value` `[K, L, P, N, D]`."""
  shape: Tuple[int, int, int, int, int]

  @nn.compact
  def __call__(self) -> Tuple[Array, Array]:
    init = nn.initializers.normal(1.0)
    return (param(self, "key", init, self.shape, BANK_AXES),
            param(self, "value", init, self.shape, BANK_AXES))


class PrefixBank(nn.Module):
  """K prefixes per stack, one chosen per example by `prompt_index [B]`.

  Attributes:
    lengths: each entry's prefix length (0: no prefix); P = max(lengths).
    names: one name per entry (the same order as the prompt bank's).
    config: the frozen model's T5Config (default: the adopting Transformer's).
  """
  lengths: Tuple[int, ...]
  names: Tuple[str, ...] = ()
  config: Optional[T5Config] = None

  takes_prompt_index = True

  def __post_init__(self):
    lengths = tuple(int(n) for n in self.lengths)
    if not lengths or min(lengths) < 0 or max(lengths) < 1:
      raise ValueError(f"PrefixBank needs at least one prefix of length >= 1 (0 = an "
                       f"entry without a prefix); got lengths {lengths}.")
    names = tuple(self.names) or tuple(f"prefix_{k}" for k in range(len(lengths)))
    if len(names) != len(lengths) or len(set(names)) != len(names):
      raise ValueError(f"PrefixBank needs one distinct name per entry; got {names} for "
                       f"{len(lengths)} lengths.")
    object.__setattr__(self, "lengths", lengths)
    object.__setattr__(self, "names", names)
    super().__post_init__()

  def visible(self) -> np.ndarray:
    """[K, P] bool: the real (left-padded) positions of each entry's prefix."""
    width = max(self.lengths)
    return (np.arange(width)[None, :] >=
            width - np.asarray(self.lengths)[:, None])

  @nn.compact
  def __call__(self, deterministic: bool = True,
               prompt_index: Optional[Array] = None
               ) -> Dict[str, Tuple[Array, Array, Array]]:
    """prompt_index [B] → {stack: (keys, values [B, L, P, N, D], visible [B, P])}."""
    del deterministic
    cfg = prefix_lib._config(self)  # pylint: disable=protected-access
    num = len(self.lengths)
    if prompt_index is None:
      if num > 1 and not self.is_initializing():
        raise ValueError(f"This PrefixBank holds {num} entries {list(self.names)}: "
                         "pass prompt_index [B] to encode/decode.")
      prompt_index = jnp.zeros((1,), jnp.int32)
    visible = jnp.take(jnp.asarray(self.visible()), prompt_index, axis=0)
    out = {}
    for stack in prefix_lib.STACKS:
      shape = (num, prefix_lib._num_layers(cfg, stack), max(self.lengths),  # pylint: disable=protected-access
               cfg.num_heads, cfg.head_dim)
      keys, values = BankKeyValues(shape, name=stack)()
      out[stack] = (jnp.take(keys, prompt_index, axis=0),
                    jnp.take(values, prompt_index, axis=0), visible)
    return out


def stack_prefixes(exports: Sequence[Optional[Mapping[str, np.ndarray]]],
                   config: T5Config) -> Tuple[Dict[str, Dict[str, np.ndarray]],
                                              Tuple[int, ...]]:
  """Folded prefix exports (`prefix.{stack}.{key,value}` `[L, P_k, N, D]`, or None
  for an entry without a prefix) → (`{stack: {'key', 'value'}}` `[K, L, P, N, D]`
  left-padded with zeros, lengths)."""
  lengths = tuple(0 if e is None else int(e["prefix.encoder.key"].shape[1])
                  for e in exports)
  width = max(lengths) if lengths else 0
  out = {}
  for stack in prefix_lib.STACKS:
    shape = (len(exports), prefix_lib._num_layers(config, stack), width,  # pylint: disable=protected-access
             config.num_heads, config.head_dim)
    out[stack] = {}
    for kind in ("key", "value"):
      stacked = np.zeros(shape, np.float32)
      for k, entry in enumerate(exports):
        if entry is None:
          continue
        array = np.asarray(entry[f"prefix.{stack}.{kind}"], np.float32)
        if array.shape[0] != shape[1] or array.shape[2:] != shape[3:] or \
            array.shape[1] != lengths[k]:
          raise ValueError(f"Prefix entry {k}: prefix.{stack}.{kind} has shape "
                           f"{list(array.shape)}; this model expects [{shape[1]}, "
                           f"{lengths[k]}, {shape[3]}, {shape[4]}] (layers, the "
                           "entry's length, heads, head_dim).")
        stacked[k, :, width - lengths[k]:] = array
      out[stack][kind] = stacked
  return out, lengths


def mixed_banks(params: Params, config: T5Config,
                prompts: Mapping[str, np.ndarray],
                prefixes: Mapping[str, Mapping[str, np.ndarray]],
                combine: str = "prefix"
                ) -> Tuple[bank_lib.PromptBank, PrefixBank, Params]:
  """Plain prompts `[P, H]` and folded prefix exports, served by one index.

  Entry order: the prompts, then the prefixes; a prompt entry has no prefix and a
  prefix entry no prompt. Returns (prompt bank, prefix bank, the frozen `params`
  with both banks at `encoder/prompt` and `prefix`).
  """
  names = tuple(prompts) + tuple(prefixes)
  if len(set(names)) != len(names):
    raise ValueError(f"Prompt and prefix names must differ; got {list(names)}.")
  width = config.emb_dim
  loaded = [np.asarray(p, np.float32) for p in prompts.values()]
  loaded += [np.zeros((0, width), np.float32)] * len(prefixes)
  prompt_bank = bank_lib.PromptBank(lengths=tuple(p.shape[0] for p in loaded),
                                    names=names, combine=combine)
  stacked_prompts, _ = bank_lib.stack_prompts(loaded, prompt_bank.pad_side)
  stacked, lengths = stack_prefixes([None] * len(prompts) + list(prefixes.values()),
                                    config)
  prefix_bank = PrefixBank(lengths=lengths, names=names)
  banked = with_params(without_params(params, "prefix"), {"prefix": stacked})
  return prompt_bank, prefix_bank, bank_lib.with_bank(
      banked, {"prompts": jnp.asarray(stacked_prompts)})
