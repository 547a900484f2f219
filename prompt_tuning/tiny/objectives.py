"""T5's two pretraining objectives, in numpy on token id lists.

* Span corruption (Raffel et al. 2020, §3.3): about `noise_density` of the tokens,
  in spans of mean length `mean_span_length`, are cut out of the input and each
  span is replaced by one sentinel; the target lists the sentinels, each followed
  by the tokens it replaced. Sentinels count down from the top of the vocabulary
  (`<extra_id_0>` = `sentinel_start`, `<extra_id_1>` = `sentinel_start - 1`, …).
* Prefix LM / "LM adaptation" (Lester et al. 2021, §3.2): the input is a prefix of
  a text and the target is its continuation.

All randomness comes from the `numpy.random.Generator` passed in, so a fixed seed
gives the same examples on every machine.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

EOS_ID = 1


def _random_partition(num_items: int, num_segments: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Splits `num_items` into `num_segments` positive lengths, uniformly at random."""
  if num_segments > num_items:
    raise ValueError(f"Cannot split {num_items} tokens into {num_segments} "
                     "non-empty spans.")
  cuts = np.sort(rng.choice(np.arange(1, num_items), num_segments - 1,
                            replace=False)) if num_segments > 1 else np.array([], int)
  bounds = np.concatenate([[0], cuts, [num_items]])
  return np.diff(bounds)


def noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
               mean_span_length: float = 3.0) -> np.ndarray:
  """A `[length]` bool mask, True on corrupted tokens, in alternating spans.

  The sequence starts with a kept span; there are as many kept spans as noise
  spans, as in T5's `random_spans_noise_mask`.
  """
  if length < 2:
    return np.zeros([length], bool)
  num_noise = int(round(length * noise_density))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = max(int(round(num_noise / mean_span_length)), 1)
  num_spans = min(num_spans, num_noise, length - num_noise)
  noise_lengths = _random_partition(num_noise, num_spans, rng)
  keep_lengths = _random_partition(length - num_noise, num_spans, rng)
  mask = np.zeros([length], bool)
  position = 0
  for keep, noise in zip(keep_lengths, noise_lengths):
    position += keep
    mask[position:position + noise] = True
    position += noise
  return mask


def span_corruption(tokens: Sequence[int], rng: np.random.Generator,
                    sentinel_start: int, noise_density: float = 0.15,
                    mean_span_length: float = 3.0) -> Tuple[List[int], List[int]]:
  """(inputs, targets) token lists, both ending in EOS.

  Args:
    tokens: the uncorrupted text, without EOS.
    rng: source of randomness.
    sentinel_start: id of `<extra_id_0>`, the last id of the unpadded vocabulary
      (SentencePiece size + extra ids - 1).
  """
  mask = noise_mask(len(tokens), rng, noise_density, mean_span_length)
  inputs, targets = [], []
  sentinel = sentinel_start
  for i, token in enumerate(tokens):
    starts_span = mask[i] and (i == 0 or not mask[i - 1])
    if mask[i]:
      if starts_span:
        inputs.append(sentinel)
        targets.append(sentinel)
        sentinel -= 1
      targets.append(int(token))
    else:
      inputs.append(int(token))
  return inputs + [EOS_ID], targets + [EOS_ID]


def prefix_lm(tokens: Sequence[int], rng: np.random.Generator,
              min_prefix: int = 1) -> Tuple[List[int], List[int]]:
  """(inputs, targets): a random split point, prefix → continuation, EOS on both."""
  tokens = [int(t) for t in tokens]
  if len(tokens) < min_prefix + 1:
    raise ValueError(f"A prefix-LM example needs more than {min_prefix} tokens; "
                     f"got {len(tokens)}.")
  split = int(rng.integers(min_prefix, len(tokens)))
  return tokens[:split] + [EOS_ID], tokens[split:] + [EOS_ID]
