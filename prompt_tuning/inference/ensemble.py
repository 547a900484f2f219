"""Prompt ensembling (Lester et al., 2021, section 7): N prompts, one frozen model.

Every example is replicated across the N prompts of a prompt bank and decoded (or
rank-classified) in ONE batch of B * N rows (row `b * N + n` = example b with the
n-th ensemble prompt), so the ensemble costs one compiled call, not N models.

  * Decoding: each prompt votes with its decoded label (a string when a
    `detokenize` function is given, else the token ids up to EOS); the most
    frequent label wins. Tie rule: among the labels with the most votes, the one
    voted by the EARLIEST prompt in the ensemble order wins (so listing prompts
    best-first makes the best prompt the tie-breaker; with all votes distinct the
    first prompt's label is the answer).
  * Rank classification: the label log-likelihoods are averaged over the N
    prompts (the log of the geometric mean of the label probabilities) and the
    best average wins; ties go to the lowest label index.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import decoding
from prompt_tuning.inference import ranking

Array = jax.Array
Params = Mapping[str, Any]


def replicate(encoder_input_tokens: Array,
              prompt_indices: Sequence[int]) -> Tuple[Array, Array]:
  """tokens [B, T], N bank rows → (tokens [B*N, T], prompt_index [B*N] int32).

  Row `b * N + n` is example b with prompt `prompt_indices[n]`.
  """
  prompt_indices = jnp.asarray(prompt_indices, jnp.int32)
  if prompt_indices.ndim != 1 or prompt_indices.shape[0] < 1:
    raise ValueError(f"prompt_indices must be a non-empty [N] list of bank rows; got "
                     f"shape {list(prompt_indices.shape)}.")
  batch, num = encoder_input_tokens.shape[0], prompt_indices.shape[0]
  tokens = jnp.repeat(encoder_input_tokens, num, axis=0)
  return tokens, jnp.tile(prompt_indices, batch)


def majority_vote(votes: Sequence[Sequence[Hashable]]) -> List[Hashable]:
  """votes [B][N] (one label per prompt, prompts in ensemble order) → [B] winners.

  The most frequent label wins; ties go to the tied label voted by the earliest
  prompt.
  """
  winners = []
  for row in votes:
    if not len(row):
      raise ValueError("majority_vote needs at least one vote per example.")
    counts = collections.Counter(row)
    top = max(counts.values())
    winners.append(next(label for label in row if counts[label] == top))
  return winners


def _until_eos(ids: np.ndarray, eos_id: int) -> Tuple[int, ...]:
  """Generated ids up to (excluding) the first EOS, trailing padding dropped."""
  ids = ids.tolist()
  if eos_id in ids:
    ids = ids[:ids.index(eos_id)]
  while ids and ids[-1] == 0:
    ids.pop()
  return tuple(ids)


def ensemble_decode(model: nn.Module, params: Params, encoder_input_tokens: Array,
                    prompt_indices: Sequence[int], *, max_decode_length: int,
                    decode_fn: Callable[..., Any] = decoding.greedy_decode,
                    detokenize: Optional[Callable[[Sequence[int]], str]] = None,
                    eos_id: int = 1, **decode_kwargs
                    ) -> Tuple[List[Hashable], List[List[Hashable]]]:
  """Decodes every example with N prompts in one batch and votes.

  Args:
    model: a `Transformer` whose prompt hook is a `PromptBank`.
    params: its parameters (bank at `encoder/prompt/prompts`).
    encoder_input_tokens: [B, T] int.
    prompt_indices: [N] bank rows forming the ensemble, in tie-break order.
    max_decode_length: L.
    decode_fn: `decoding.greedy_decode` (default), `beam_search` or
      `sample_decode` (pass `rng=` in `decode_kwargs`).
    detokenize: ids → string (e.g. `vocab.decode`), to vote on strings; the ids
      it receives stop before EOS, trailing padding dropped. Without it, votes
      are id tuples.
    eos_id: the end token, used to cut the decoded ids.
    **decode_kwargs: forwarded to `decode_fn` (e.g. `beam_size=4`).

  Returns:
    (winners [B], votes [B][N]): the voted label per example and every prompt's
    label.
  """
  tokens, index = replicate(encoder_input_tokens, prompt_indices)
  out = decode_fn(model, params, tokens, max_decode_length=max_decode_length,
                  prompt_index=index, eos_id=eos_id, **decode_kwargs)
  out = np.asarray(out[0] if isinstance(out, tuple) else out)
  num = len(prompt_indices)
  out = out.reshape(encoder_input_tokens.shape[0], num, -1)  # [B, N, L]
  votes = []
  for row in out:
    labels = [_until_eos(ids, eos_id) for ids in row]
    votes.append([detokenize(list(l)) for l in labels] if detokenize else labels)
  return majority_vote(votes), votes


def ensemble_rank_classify(model: nn.Module, params: Params,
                           encoder_input_tokens: Array, label_tokens: Array,
                           prompt_indices: Sequence[int]
                           ) -> Tuple[Array, Array, Array]:
  """Rank classification with label log-likelihoods averaged over N prompts.

  Args:
    encoder_input_tokens: [B, T] int.
    label_tokens: [K, L] int, 0-padded label sequences.
    prompt_indices: [N] bank rows forming the ensemble.

  Returns:
    (best [B] int32, mean scores [B, K], per-prompt scores [B, N, K]).
  """
  tokens, index = replicate(encoder_input_tokens, prompt_indices)
  _, scores = ranking.rank_classify(model, params, tokens, label_tokens,
                                    prompt_index=index)  # [B*N, K]
  scores = scores.reshape(encoder_input_tokens.shape[0], len(prompt_indices), -1)
  mean = jnp.mean(scores, axis=1)
  return jnp.argmax(mean, axis=-1).astype(jnp.int32), mean, scores
