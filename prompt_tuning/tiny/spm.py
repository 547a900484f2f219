"""Trains the bundled tiny model's SentencePiece vocabulary, deterministically.

A BPE SentencePiece model with T5's special ids (pad 0, eos 1, unk 2, no bos),
trained single-threaded on a fixed text with every line used in order (no
sampling), so the same text always gives the same file. BPE ids follow merge
order, so the low ids are the most frequent pieces, as in T5's vocabulary; with the
default size every word of the toy language is a single piece.
"""
from __future__ import annotations

import io
from typing import Iterable

import sentencepiece as spm

DEFAULT_SIZE = 384


def train(lines: Iterable[str], model_path: str, vocab_size: int = DEFAULT_SIZE
          ) -> bytes:
  """Trains a BPE model on `lines`, writes it to `model_path`, returns its bytes.

  Args:
    lines: training text, one sentence or document per item (no newlines inside).
    model_path: where to write the `.model` file.
    vocab_size: number of pieces, special ids included (the 100 extra ids are
      added on top by `seqio.SentencePieceVocabulary`).
  """
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(lines)),
      model_writer=buffer,
      model_type="bpe",
      vocab_size=vocab_size,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0,
      num_threads=1,
      input_sentence_size=0,  # use every line: no random sampling
      shuffle_input_sentence=False,
      max_sentence_length=1 << 16,
      minloglevel=2,
  )
  data = buffer.getvalue()
  with open(model_path, "wb") as f:
    f.write(data)
  return data
