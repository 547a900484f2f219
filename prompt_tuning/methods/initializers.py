"""Initializers for a `[P, H]` prompt, filled from the frozen model after loading.

Every initializer here is a factory returning an `Initializer`:

  init(rng, shape=(P, H), embedding=[vocab, H]) -> prompt [P, H] float32

`embedding` is the frozen `token_embedder/embedding` table. Initializers are
jax-traceable in `rng` and `embedding` (tokenization and file reading happen in
Python), so they run under `jax.eval_shape` and `jax.jit`.

  random_uniform   U[-0.5, 0.5] (the paper's range)
  sampled_vocab    rows of the 5,000 most frequent vocabulary embeddings
  class_labels     mean embedding of each label's sub-tokens, then `fallback`
  from_text        one token embedding per row, then `fallback`

Labels and vocabularies arrive as values: the entry points resolve them from the
seqio task (`configurables.py`), and `prompt_files.from_file` reads prompt files.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[[Array, Tuple[int, int], Optional[Array]], Array]

# SentencePiece ids are ordered by frequency, so the first rows are common pieces.
DEFAULT_POPULATION = 5000


# ---------------------------------------------------------------- random


def random_uniform(minval: float = -0.5, maxval: float = 0.5) -> Initializer:
  """Uniform on `[minval, maxval)`; the default `[-0.5, 0.5]` is the paper's range.

  Note: the reference implementation (google-research/prompt-tuning) uses
  `flax.linen.initializers.uniform(scale=0.5)`, i.e. `[0, 0.5)`; pass
  `minval=0.0` to reproduce it.
  """
  if not maxval > minval:
    raise ValueError(f"random_uniform needs minval < maxval; got [{minval}, {maxval}).")

  def init(rng, shape, embedding=None):
    del embedding
    return jax.random.uniform(rng, shape, jnp.float32, minval, maxval)

  return init


# ---------------------------------------------------------------- vocabulary


def sampled_vocab(population: int = DEFAULT_POPULATION) -> Initializer:
  """Rows drawn without replacement from the first `population` embedding rows."""

  def init(rng, shape, embedding):
    _check_embedding(embedding, shape, "sampled_vocab")
    size = min(population, embedding.shape[0])
    if shape[0] > size:
      raise ValueError(
          f"sampled_vocab draws {shape[0]} rows without replacement from the first "
          f"{size} vocabulary rows; use a shorter prompt or a larger "
          f"`prompt_init.sampled_vocab.population`.")
    ids = jax.random.choice(rng, size, (shape[0],), replace=False)
    return jnp.take(embedding, ids, axis=0).astype(jnp.float32)

  return init


def class_labels(labels: Optional[Sequence[str]] = None, vocabulary: Any = None,
                 fallback: Optional[Initializer] = None) -> Initializer:
  """Row i is the mean embedding of the sub-tokens of label i; the rest `fallback`.

  Args:
    labels: the verbalizers, e.g. `['negative', 'positive']` (gin: CLASS_LABELS, or
      the task's labels, resolved by the entry point).
    vocabulary: a seqio-style vocabulary (anything with `encode(str) -> ids`) or the
      path of a SentencePiece model: the task's `targets` vocabulary.
    fallback: initializer for the rows after the labels (default: `sampled_vocab()`).

  More labels than prompt rows: a warning, and only the first P labels are used.
  """
  names = _label_strings(labels)
  vocab = _vocabulary(vocabulary, "class_labels")
  fallback = fallback or sampled_vocab()

  def init(rng, shape, embedding):
    _check_embedding(embedding, shape, "class_labels")
    used = names
    if len(names) > shape[0]:
      logging.warning("class_labels: %d labels but the prompt has %d rows; using the "
                      "first %d labels.", len(names), shape[0], shape[0])
      used = names[:shape[0]]
    rows = []
    for name in used:
      ids = list(vocab.encode(name))
      if not ids:
        raise ValueError(f"class_labels: label {name!r} encodes to no tokens.")
      _check_ids(ids, embedding, f"class_labels: label {name!r}")
      rows.append(jnp.mean(jnp.take(embedding, jnp.asarray(ids), axis=0), axis=0))
    return _fill(rows, rng, shape, embedding, fallback)

  return init


def from_text(text: str, vocabulary: Any = None,
              fallback: Optional[Initializer] = None) -> Initializer:
  """One token embedding per row from `text`'s tokens; rows after them `fallback`.

  `vocabulary` as in `class_labels` (the task's `inputs` vocabulary). Text longer
  than the prompt is truncated (with a warning).
  """
  if not isinstance(text, str):
    raise ValueError(f"prompt_init.from_text needs a string (gin: PROMPT_TEXT = "
                     f"'...'); got {text!r}.")
  vocab = _vocabulary(vocabulary, "from_text")
  fallback = fallback or sampled_vocab()

  def init(rng, shape, embedding):
    _check_embedding(embedding, shape, "from_text")
    ids = list(vocab.encode(text))
    if len(ids) > shape[0]:
      logging.warning("from_text: %d tokens but the prompt has %d rows; truncating.",
                      len(ids), shape[0])
      ids = ids[:shape[0]]
    _check_ids(ids, embedding, f"from_text: {text!r}")
    rows = list(jnp.take(embedding, jnp.asarray(ids, dtype=jnp.int32), axis=0)) if ids else []
    return _fill(rows, rng, shape, embedding, fallback)

  return init


# ---------------------------------------------------------------- helpers


def _check_embedding(embedding, shape, name):
  if embedding is None:
    raise ValueError(f"{name} needs the frozen embedding table "
                     f"(params['token_embedder']['embedding']).")
  if embedding.ndim != 2 or embedding.shape[1] != shape[1]:
    raise ValueError(f"{name}: embedding table of shape {tuple(embedding.shape)} does "
                     f"not match a prompt of width H = {shape[1]}.")


def _check_ids(ids, embedding, what):
  if ids and max(ids) >= embedding.shape[0]:
    raise ValueError(f"{what} has token id {max(ids)} but the embedding table has "
                     f"{embedding.shape[0]} rows: the vocabulary does not belong to "
                     f"this model.")


def _fill(rows, rng, shape, embedding, fallback):
  """Stacks the given rows and fills the remaining `P - len(rows)` from `fallback`."""
  rest = shape[0] - len(rows)
  parts = []
  if rows:
    parts.append(jnp.stack(rows).astype(jnp.float32))
  if rest > 0:
    parts.append(fallback(rng, (rest, shape[1]), embedding).astype(jnp.float32))
  return jnp.concatenate(parts, axis=0)


def _label_strings(labels):
  if labels is None:
    raise ValueError("class_labels needs `labels` (gin: CLASS_LABELS) or a `task` to "
                     "read them from.")
  if isinstance(labels, str):
    raise ValueError(f"class_labels expects a list of labels, got the string "
                     f"{labels!r}; bind e.g. CLASS_LABELS = ['negative', 'positive'].")
  return [str(label) for label in labels]


def _vocabulary(vocabulary, name):
  """A vocabulary object; a string is the path of a SentencePiece model."""
  if vocabulary is None:
    raise ValueError(f"{name} needs a vocabulary (gin: prompt_init.{name}.vocabulary, "
                     f"or a `task` whose vocabulary to use).")
  if isinstance(vocabulary, (str, os.PathLike)):
    return _sentencepiece(os.fspath(vocabulary))
  if not hasattr(vocabulary, "encode"):
    raise ValueError(f"{name}: vocabulary {vocabulary!r} has no `encode` method.")
  return vocabulary


def text_ids(text: str, vocabulary: Any, name: str):
  """Token ids of `text` (no EOS) with a vocabulary as `_vocabulary` resolves it."""
  if not isinstance(text, str):
    raise ValueError(f"{name} needs a string; got {text!r}.")
  return list(_vocabulary(vocabulary, name).encode(text))


_SENTENCEPIECE_CACHE = {}


class SentencePieceVocab:
  """Encodes text with a SentencePiece model file, like seqio's vocabulary.

  The ids match `seqio.SentencePieceVocabulary(path).encode` (no EOS added) without
  importing seqio/TensorFlow.
  """

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    from etils import epath  # pylint: disable=g-import-not-at-top  # local or gs://
    self.path = path
    self._processor = sentencepiece.SentencePieceProcessor(
        model_proto=epath.Path(path).read_bytes())

  def encode(self, text: str):
    return self._processor.encode(text)


def _sentencepiece(path):
  if path not in _SENTENCEPIECE_CACHE:
    try:
      _SENTENCEPIECE_CACHE[path] = SentencePieceVocab(path)
    except (OSError, RuntimeError) as e:
      raise FileNotFoundError(f"Cannot read the SentencePiece model {path} ({e}); bind "
                              f"prompt_init.class_labels.vocabulary (or "
                              f"prompt_init.from_text.vocabulary) to a readable "
                              f"model file.") from e
  return _SENTENCEPIECE_CACHE[path]
