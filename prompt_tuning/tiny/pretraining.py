"""Deterministic batches for pretraining the bundled tiny T5 (numpy, no seqio).

Three example streams, each yielding fixed-shape T5X-style feature dicts
(`encoder_input_tokens [B, Ti]`, `decoder_input_tokens [B, Tt]`,
`decoder_target_tokens [B, Tt]`, `decoder_loss_weights [B, Tt]`):

  * `span_corruption`: documents chunked to `SPAN_CHUNK` tokens, T5's objective.
  * `prefix_lm`: documents chunked to `LM_CHUNK` tokens, split at a random point
    (LM adaptation).
  * `multitask`: the task family of `corpus.TASKS`, each input led by its task
    name (`sentiment: …`), as in T5's supervised multitask mixture.

The same seed and split always give the same batches in the same order.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import sentencepiece as spm

from prompt_tuning.tiny import assets, corpus, objectives

Batch = Dict[str, np.ndarray]
EXTRA_IDS = assets.EXTRA_IDS

# Fixed shapes (tokens): chosen so that no example of the toy language is cut.
SPAN_CHUNK, SPAN_INPUTS, SPAN_TARGETS = 32, 32, 8
LM_CHUNK, LM_INPUTS, LM_TARGETS = 32, 32, 32
TASK_INPUTS, TASK_TARGETS = 20, 4
OBJECTIVES = ("span_corruption", "prefix_lm", "multitask")


class Tokenizer:
  """SentencePiece ids plus T5's extra ids on top (`<extra_id_0>` is the last id)."""

  def __init__(self, model_path: str):
    self.processor = spm.SentencePieceProcessor(model_file=str(model_path))
    self.pieces = self.processor.get_piece_size()
    self.vocab_size = self.pieces + EXTRA_IDS  # unpadded
    self.sentinel_start = self.vocab_size - 1

  def encode(self, text: str) -> List[int]:
    return list(self.processor.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if 1 in ids:
      ids = ids[:ids.index(1)]
    return self.processor.decode([i for i in ids if 2 < i < self.pieces])


def features(pairs: Sequence[Tuple[List[int], List[int]]], input_length: int,
             target_length: int) -> Batch:
  """Pads (inputs, targets) token lists (EOS included) to a T5X feature batch."""
  batch = len(pairs)
  enc = np.zeros([batch, input_length], np.int32)
  tgt = np.zeros([batch, target_length], np.int32)
  for i, (inputs, targets) in enumerate(pairs):
    if len(inputs) > input_length or len(targets) > target_length:
      raise ValueError(f"Example longer than its batch shape: inputs {len(inputs)} > "
                       f"{input_length} or targets {len(targets)} > {target_length}; "
                       "raise the lengths in prompt_tuning/tiny/pretraining.py.")
    enc[i, :len(inputs)] = inputs
    tgt[i, :len(targets)] = targets
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def _chunks(tokenizer: Tokenizer, seed: int, split: str, length: int
            ) -> Iterator[List[int]]:
  """Consecutive `length`-token pieces of each document (short tails dropped)."""
  for doc in corpus.documents(seed, split):
    ids = tokenizer.encode(doc)
    for start in range(0, len(ids), length):
      piece = ids[start:start + length]
      if len(piece) >= 8:
        yield piece


def span_corruption(tokenizer: Tokenizer, seed: int, split: str, batch_size: int
                    ) -> Iterator[Batch]:
  rng = np.random.default_rng(seed)
  chunks = _chunks(tokenizer, seed, split, SPAN_CHUNK)
  while True:
    pairs = [objectives.span_corruption(next(chunks), rng, tokenizer.sentinel_start)
             for _ in range(batch_size)]
    yield features(pairs, SPAN_INPUTS, SPAN_TARGETS)


def prefix_lm(tokenizer: Tokenizer, seed: int, split: str, batch_size: int
              ) -> Iterator[Batch]:
  rng = np.random.default_rng(seed + 1)
  chunks = _chunks(tokenizer, seed + 1, split, LM_CHUNK - 1)
  while True:
    pairs = [objectives.prefix_lm(next(chunks), rng) for _ in range(batch_size)]
    yield features(pairs, LM_INPUTS, LM_TARGETS)


def encode_example(tokenizer: Tokenizer, example: Dict[str, str]
                   ) -> Tuple[List[int], List[int]]:
  return (tokenizer.encode(example["inputs"]) + [objectives.EOS_ID],
          tokenizer.encode(example["targets"]) + [objectives.EOS_ID])


def multitask(tokenizer: Tokenizer, seed: int, split: str, batch_size: int,
              tasks: Sequence[str] = tuple(corpus.TASKS)) -> Iterator[Batch]:
  examples = corpus.mixture_examples(seed + 2, split, tasks)
  while True:
    pairs = [encode_example(tokenizer, next(examples)) for _ in range(batch_size)]
    yield features(pairs, TASK_INPUTS, TASK_TARGETS)


def task_batch(tokenizer: Tokenizer, task: str, split: str, size: int,
               with_prefix: bool, seed: int = 0) -> Batch:
  """`size` examples of one task, with or without its task-name prefix."""
  stream = corpus.task_examples(task, split, seed, with_prefix)
  pairs = [encode_example(tokenizer, next(stream)) for _ in range(size)]
  return features(pairs, TASK_INPUTS, TASK_TARGETS)


def stream(objective: str, tokenizer: Tokenizer, seed: int, split: str,
           batch_size: int) -> Iterator[Batch]:
  """The batch stream of one objective (`OBJECTIVES`)."""
  makers = {"span_corruption": span_corruption, "prefix_lm": prefix_lm,
            "multitask": multitask}
  if objective not in makers:
    raise ValueError(f"Unknown objective {objective!r}; expected one of {OBJECTIVES}.")
  return makers[objective](tokenizer, seed, split, batch_size)
