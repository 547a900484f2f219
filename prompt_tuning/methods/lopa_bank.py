"""LoPA runs served in one batch with plain prompts (and prefix-tuned runs).

A LoPA prompt is computed per example from its input (`methods/lopa.py`), so a
bank cannot hold it as a fixed `[P, H]` row. `MixedPromptBank` is a prompt hook
that holds
  * the plain prompts as a `PromptBank` does: `encoder/prompt/prompts` `[K, P0, H]`
    (rows of non-prompt entries are zeros of length 0), and
  * each LoPA entry's own Z_S and heads under `encoder/prompt/lopa_<row>/…` (the
    paths of a LoPA run's `encoder/prompt/…`, one level down).
Every LoPA entry computes its prompt for the whole batch (the heads are two small
MLPs on the pooled input `[B, H]`), and `prompt_index [B]` keeps, per example, the
prompt of its own entry. All prompts are padded to the longest, P, on the side the
bank pads (`PromptBank.pad_side`), and the padding is masked, so each example sees
exactly its own entry's prompt at the same relative positions as when served alone.

  bank, prefixes, params = mixed_banks(frozen, config, prompts={'rte': [P, H]},
                                       prefixes={'sst2': folded_export},
                                       lopas={'boolq': (LopaEntry(...), arrays)})
  model = Transformer(config, prompt=bank, prefix=prefixes)
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import lopa as lopa_lib
from prompt_tuning.methods import prefix_bank as prefix_bank_lib
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import param
from prompt_tuning.params import Params, with_params, without_params

Array = jax.Array
# Where a LoPA run keeps its parameters (its export names start with this).
LOPA_SCOPE = "encoder/prompt"


@dataclasses.dataclass(frozen=True)
class LopaEntry:
  """The settings of one LoPA run (those of `methods.lopa.lopa`) that shape its
  forward pass; dropout is off when serving."""
  length: int
  rank: int
  hidden_dim: int
  features: str = "encoder"
  variant: str = "gate"

  @classmethod
  def of(cls, module: lopa_lib.LopaPrompt) -> "LopaEntry":
    """The entry of a trained run's `LopaPrompt` hook."""
    return cls(module.length, module.rank, module.hidden_dim, module.features,
               module.variant)

  def module(self, combine: str, name: str) -> lopa_lib.LopaPrompt:
    return lopa_lib.LopaPrompt(length=self.length, rank=self.rank,
                               hidden_dim=self.hidden_dim, dropout_rate=0.0,
                               features=self.features, variant=self.variant,
                               combine=combine, name=name)

  @property
  def out_length(self) -> int:
    return 2 * self.length if self.variant == "concat" else self.length


def entry_scope(row: int) -> str:
  return f"lopa_{row}"


class MixedPromptBank(nn.Module):
  """Plain prompts and LoPA entries, one chosen per example by `prompt_index [B]`.

  Attributes:
    lengths: each row's plain-prompt length (0 for LoPA and prefix rows).
    names: one distinct name per row.
    lopa: (row, LopaEntry) for every LoPA row.
    combine: 'prefix' | 'suffix' | 'after_bos' (as `PromptBank`).
  """
  lengths: Tuple[int, ...]
  names: Tuple[str, ...]
  lopa: Tuple[Tuple[int, LopaEntry], ...] = ()
  combine: str = "prefix"

  def __post_init__(self):
    lengths = tuple(int(n) for n in self.lengths)
    names = tuple(self.names)
    if len(names) != len(lengths) or len(set(names)) != len(names):
      raise ValueError(f"MixedPromptBank needs one distinct name per row; got names "
                       f"{names} for {len(lengths)} rows.")
    for row, _ in self.lopa:
      if not 0 <= row < len(lengths) or lengths[row]:
        raise ValueError(f"LoPA row {row} must be a row of the bank with no plain "
                         f"prompt (length 0); lengths are {lengths}.")
    prompt_lib.check_combine(self.combine)
    object.__setattr__(self, "lengths", lengths)
    object.__setattr__(self, "names", names)
    object.__setattr__(self, "lopa", tuple((int(r), e) for r, e in self.lopa))
    if max(self.row_lengths) < 1:
      raise ValueError(f"MixedPromptBank needs at least one prompt or LoPA entry; "
                       f"got lengths {lengths} and no LoPA rows.")
    if self.combine == "after_bos" and len(set(self.row_lengths) - {0}) > 1:
      raise ValueError(f"A bank combined 'after_bos' needs prompts of one length; "
                       f"got lengths {self.row_lengths}. Use 'prefix'.")
    super().__post_init__()

  # The interface of `PromptBank` that serving uses.
  index = bank_lib.PromptBank.index
  indices = bank_lib.PromptBank.indices

  @property
  def num_prompts(self) -> int:
    return len(self.lengths)

  @property
  def row_lengths(self) -> Tuple[int, ...]:
    """Each row's prompt length as served (a LoPA row: its P')."""
    out = list(self.lengths)
    for row, entry in self.lopa:
      out[row] = entry.out_length
    return tuple(out)

  @property
  def max_length(self) -> int:
    return max(self.row_lengths)

  @property
  def needs_encoder_features(self) -> bool:
    return any(e.features == "encoder" for _, e in self.lopa)

  @property
  def pad_side(self) -> str:
    return "right" if self.combine == "suffix" else "left"

  def visible(self) -> np.ndarray:
    """[K, P] bool: each row's real prompt positions."""
    positions = np.arange(self.max_length)[None, :]
    lengths = np.asarray(self.row_lengths)[:, None]
    if self.pad_side == "right":
      return positions < lengths
    return positions >= self.max_length - lengths

  def _pad(self, prompt: Array) -> Array:
    """[B, P_k, H] → [B, P, H], zeros on the pad side."""
    extra = self.max_length - prompt.shape[1]
    before, after = (0, extra) if self.pad_side == "right" else (extra, 0)
    return jnp.pad(prompt, ((0, 0), (before, after), (0, 0)))

  @nn.compact
  def __call__(self, x: Array, mask: Array, features: Optional[Array] = None,
               prompt_index: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """x [B, T, H], mask [B, T], prompt_index [B] → ([B, P+T, H], [B, P+T])."""
    batch, _, width = x.shape
    if prompt_index is None:
      if self.num_prompts > 1 and not self.is_initializing():
        raise ValueError(f"This bank holds {self.num_prompts} entries "
                         f"{list(self.names)}: pass prompt_index [B].")
      prompt_index = jnp.zeros((batch,), jnp.int32)
    bank_lib._check_index(prompt_index, batch, self.num_prompts)  # pylint: disable=protected-access
    chosen = jnp.zeros((batch, self.max_length, width), jnp.float32)
    if max(self.lengths) > 0:
      init = nn.initializers.zeros
      prompts = param(self, "prompts", init,
                      (self.num_prompts, max(self.lengths), width),
                      ("prompts", "prompt", "embed"))
      chosen = self._pad(jnp.take(prompts, prompt_index, axis=0).astype(jnp.float32))
    for row, entry in self.lopa:
      # `features` is the pooled encoder output (computed when any entry needs it);
      # an entry trained on pooled input embeddings pools its own from `x`.
      own = entry.module(self.combine, entry_scope(row)).vectors(
          x, mask, features if entry.features == "encoder" else None,
          deterministic)  # [B, P_row, H]
      chosen = jnp.where((prompt_index == row)[:, None, None],
                         self._pad(own.astype(jnp.float32)), chosen)
    visible = jnp.take(jnp.asarray(self.visible()), prompt_index, axis=0)
    return prompt_lib.combine(self.combine, chosen, x, mask, visible)


def lopa_params(arrays: Mapping[str, np.ndarray], entry: LopaEntry, width: int,
                name: str) -> Dict[str, np.ndarray]:
  """A LoPA run's export (`encoder.prompt.<path>` `.npy` names) → its subtree
  `{path: array}` below `encoder/prompt`, with the shapes `entry` expects."""
  prefix = LOPA_SCOPE.replace("/", ".") + "."
  own = {k[len(prefix):].replace(".", "/"): np.asarray(v, np.float32)
         for k, v in arrays.items() if k.startswith(prefix)}
  hidden, rank, length = entry.hidden_dim, entry.rank, entry.length
  expected = {
      "prompt": (length, width),
      "u_head/hidden_kernel": (width, hidden), "u_head/hidden_bias": (hidden,),
      "u_head/out_kernel": (hidden, length * rank), "u_head/out_bias": (length * rank,),
      "v_head/hidden_kernel": (width, hidden), "v_head/hidden_bias": (hidden,),
      "v_head/out_kernel": (hidden, width * rank), "v_head/out_bias": (width * rank,)}
  for path, shape in expected.items():
    if path not in own:
      raise ValueError(f"LoPA entry {name!r}: its export has no "
                       f"{prefix}{path.replace('/', '.')}.npy; found "
                       f"{sorted(arrays)}.")
    if tuple(own[path].shape) != shape:
      raise ValueError(f"LoPA entry {name!r}: {path} has shape "
                       f"{list(own[path].shape)}; its recorded settings (length "
                       f"{length}, rank {rank}, hidden_dim {hidden}) and the model "
                       f"width {width} need {list(shape)}.")
  return {p: own[p] for p in expected}


def mixed_banks(params: Params, config: T5Config,
                prompts: Mapping[str, np.ndarray],
                prefixes: Mapping[str, Mapping[str, np.ndarray]],
                lopas: Mapping[str, Tuple[LopaEntry, Mapping[str, np.ndarray]]],
                combine: str = "prefix"
                ) -> Tuple[MixedPromptBank, Optional[prefix_bank_lib.PrefixBank],
                           Params]:
  """Plain prompts `[P, H]`, folded prefix exports and LoPA runs (entry, export
  arrays), served by one index in that order.

  Returns (prompt hook, prefix bank or None without prefixes, the frozen `params`
  with the banks at `encoder/prompt` and `prefix`).
  """
  names = tuple(prompts) + tuple(prefixes) + tuple(lopas)
  if len(set(names)) != len(names):
    raise ValueError(f"Served names must differ; got {list(names)}.")
  width = config.emb_dim
  loaded = [np.asarray(p, np.float32) for p in prompts.values()]
  loaded += [np.zeros((0, width), np.float32)] * (len(prefixes) + len(lopas))
  first = len(prompts) + len(prefixes)
  entries = tuple((first + k, entry) for k, (entry, _) in enumerate(lopas.values()))
  bank = MixedPromptBank(lengths=tuple(p.shape[0] for p in loaded), names=names,
                         lopa=entries, combine=combine)
  tree: Dict[str, np.ndarray] = {}
  if max(bank.lengths) > 0:
    tree["prompts"], _ = bank_lib.stack_prompts(loaded, bank.pad_side)
  for (row, entry), (name, (_, arrays)) in zip(entries, lopas.items()):
    for path, value in lopa_params(arrays, entry, width, name).items():
      tree[f"{entry_scope(row)}/{path}"] = value
  served = without_params(params, LOPA_SCOPE)
  prefix_bank = None
  if prefixes:
    stacked, lengths = prefix_bank_lib.stack_prefixes(
        [None] * len(prompts) + list(prefixes.values()) + [None] * len(lopas), config)
    prefix_bank = prefix_bank_lib.PrefixBank(lengths=lengths, names=names)
    served = with_params(without_params(served, "prefix"), {"prefix": stacked})
  served = with_params(served, {f"{LOPA_SCOPE}/{k}": jnp.asarray(v)
                                for k, v in tree.items()})
  return bank, prefix_bank, served
