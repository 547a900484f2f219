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
  from_file        a `.npy` of shape `[P, H]`, e.g. a released prompt
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[[Array, Tuple[int, int], Optional[Array]], Array]

# SentencePiece ids are ordered by frequency, so the first rows are common pieces.
DEFAULT_POPULATION = 5000


class PromptFileError(ValueError):
  """A prompt file cannot be used: not a `.npy` array, or the wrong shape.

  The message names the file, the expected shape and what was found.
  """


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


def class_labels(labels: Optional[Sequence[str]] = None,
                 vocabulary: Any = None,
                 task: Optional[str] = None,
                 fallback: Optional[Initializer] = None) -> Initializer:
  """Row i is the mean embedding of the sub-tokens of label i; the rest `fallback`.

  Args:
    labels: the verbalizers, e.g. `['negative', 'positive']`. If None, they are read
      from `tasks.get_label_strings(task)`.
    vocabulary: a seqio-style vocabulary (anything with `encode(str) -> ids`) or the
      path of a SentencePiece model; None means the `targets` vocabulary of `task`
      (labels are targets), else the tasks' default (`tasks.vocabulary_path()`).
    task: the seqio task or mixture whose labels (when `labels` is None) and
      vocabulary (when `vocabulary` is None) are used.
    fallback: initializer for the rows after the labels (default: `sampled_vocab()`).

  More labels than prompt rows: a warning, and only the first P labels are used.
  """
  fallback = fallback or sampled_vocab()

  def init(rng, shape, embedding):
    _check_embedding(embedding, shape, "class_labels")
    names = _label_strings(labels, task)
    if len(names) > shape[0]:
      logging.warning("class_labels: %d labels but the prompt has %d rows; using the "
                      "first %d labels.", len(names), shape[0], shape[0])
      names = names[:shape[0]]
    vocab = _vocabulary(vocabulary, "class_labels", task, "targets")
    rows = []
    for name in names:
      ids = list(vocab.encode(name))
      if not ids:
        raise ValueError(f"class_labels: label {name!r} encodes to no tokens.")
      _check_ids(ids, embedding, f"class_labels: label {name!r}")
      rows.append(jnp.mean(jnp.take(embedding, jnp.asarray(ids), axis=0), axis=0))
    return _fill(rows, rng, shape, embedding, fallback)

  return init


def from_text(text: str, vocabulary: Any = None,
              fallback: Optional[Initializer] = None,
              task: Optional[str] = None) -> Initializer:
  """One token embedding per row from `text`'s tokens; rows after them `fallback`.

  `vocabulary` as in `class_labels`; when None, the `inputs` vocabulary of `task`
  if given, else the tasks' default.

  Text longer than the prompt is truncated (with a warning).
  """
  if not isinstance(text, str):
    raise ValueError(f"prompt_init.from_text needs a string (gin: PROMPT_TEXT = "
                     f"'...'); got {text!r}.")
  fallback = fallback or sampled_vocab()

  def init(rng, shape, embedding):
    _check_embedding(embedding, shape, "from_text")
    ids = list(_vocabulary(vocabulary, "from_text", task, "inputs").encode(text))
    if len(ids) > shape[0]:
      logging.warning("from_text: %d tokens but the prompt has %d rows; truncating.",
                      len(ids), shape[0])
      ids = ids[:shape[0]]
    _check_ids(ids, embedding, f"from_text: {text!r}")
    rows = list(jnp.take(embedding, jnp.asarray(ids, dtype=jnp.int32), axis=0)) if ids else []
    return _fill(rows, rng, shape, embedding, fallback)

  return init


# ---------------------------------------------------------------- file


def load_prompt_file(path: Union[str, os.PathLike],
                     shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
  """Reads a `[P, H]` prompt from a `.npy` file as float32.

  Raises:
    PromptFileError: the file is missing, not a `.npy` array (pickles are refused),
      not a 2-D float array, or not of `shape` when given.
  """
  path = os.fspath(path)
  expected = f"[{shape[0]}, {shape[1]}]" if shape else "[P, H]"
  try:
    with open(path, "rb") as f:
      _check_npy_header(f, path, expected)
      array = np.load(f, allow_pickle=False)
  except PromptFileError:
    raise
  except FileNotFoundError as e:
    raise PromptFileError(f"Prompt file {path} does not exist (expected a .npy "
                          f"array of shape {expected}).") from e
  except Exception as e:  # numpy raises many types for malformed bytes.
    raise PromptFileError(f"Prompt file {path} is not a readable .npy array of shape "
                          f"{expected} ({type(e).__name__}: {e}).") from e
  if not isinstance(array, np.ndarray):  # e.g. an .npz archive
    raise PromptFileError(f"Prompt file {path} holds {type(array).__name__}, not a "
                          f"single .npy array of shape {expected}.")
  if array.ndim != 2:
    raise PromptFileError(f"Prompt file {path} has shape {list(array.shape)} (rank "
                          f"{array.ndim}); expected {expected}.")
  if not np.issubdtype(array.dtype, np.floating):
    raise PromptFileError(f"Prompt file {path} has dtype {array.dtype}; expected a "
                          f"float array of shape {expected}.")
  if shape is not None and tuple(array.shape) != tuple(shape):
    raise PromptFileError(f"Prompt file {path} has shape {list(array.shape)}; expected "
                          f"{expected} (prompt length P, model width H). Set "
                          f"PROMPT_LENGTH to {array.shape[0]} or use a model with "
                          f"H = {array.shape[1]}.")
  with np.errstate(all="ignore"):
    return array.astype(np.float32)


def from_file(path: Union[str, os.PathLike]) -> Initializer:
  """The prompt stored in a `.npy` file of shape `[P, H]` (any float dtype → float32).

  `path` may also be a Hugging Face PEFT prompt-tuning adapter directory (see
  `prompt_tuning.prompt_files`), to continue training from a PEFT prompt.
  """
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"prompt_init.from_file needs the path of a .npy file (gin: "
                     f"PROMPT_FILE = '/path/prompt.npy'); got {path!r}.")

  def init(rng, shape, embedding=None):
    del rng, embedding
    if os.path.isdir(path):
      return jnp.asarray(_load_peft_prompt(path, shape))
    return jnp.asarray(load_prompt_file(path, shape))

  return init


def _load_peft_prompt(path, shape):
  from prompt_tuning import prompt_files  # pylint: disable=g-import-not-at-top  # no cycle at import
  if not prompt_files.is_peft_dir(path):
    raise PromptFileError(f"Prompt path {path} is a directory without "
                          f"{prompt_files.ADAPTER_CONFIG}; expected a .npy file of shape "
                          f"[{shape[0]}, {shape[1]}] or a PEFT prompt-tuning adapter.")
  prompt = prompt_files.load_peft(path)
  if tuple(prompt.shape) != tuple(shape):
    raise PromptFileError(f"PEFT adapter {path} holds a prompt of shape "
                          f"{list(prompt.shape)}; expected [{shape[0]}, {shape[1]}] "
                          f"(set PROMPT_LENGTH to {prompt.shape[0]}).")
  return prompt


# ---------------------------------------------------------------- helpers


def _check_npy_header(f, path, expected):
  """Validates a `.npy` header before numpy allocates anything; rewinds `f`.

  Rejects non-float dtypes, ranks other than 2 and sizes that disagree with the
  file length, so that arbitrary bytes never make `np.load` allocate a huge array.
  """
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise ValueError(f"unsupported .npy format version {version}")
  except Exception as e:  # pylint: disable=broad-except
    raise PromptFileError(f"Prompt file {path} is not a .npy array of shape {expected} "
                          f"({type(e).__name__}: {e}).") from e
  if dtype.hasobject or not np.issubdtype(dtype, np.floating):
    raise PromptFileError(f"Prompt file {path} has dtype {dtype}; expected a float "
                          f"array of shape {expected}.")
  if len(shape) != 2:
    raise PromptFileError(f"Prompt file {path} has shape {list(shape)} (rank "
                          f"{len(shape)}); expected {expected}.")
  data_bytes = math.prod(int(d) for d in shape) * dtype.itemsize
  available = os.fstat(f.fileno()).st_size - f.tell()
  if data_bytes != available:
    raise PromptFileError(f"Prompt file {path} is truncated or has trailing bytes: its "
                          f"header promises {list(shape)} {dtype} ({data_bytes} bytes) "
                          f"but {available} bytes follow; expected {expected}.")
  f.seek(0)



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


def _label_strings(labels, task):
  if labels is not None:
    if isinstance(labels, str):
      raise ValueError(f"class_labels expects a list of labels, got the string "
                       f"{labels!r}; bind e.g. CLASS_LABELS = ['negative', 'positive'].")
    return [str(label) for label in labels]
  if task is None:
    raise ValueError("class_labels needs `labels` (gin: CLASS_LABELS) or a `task` to "
                     "read them from.")
  import tasks  # pylint: disable=g-import-not-at-top  # only when asked for
  found = tasks.get_label_strings(task)
  if not found:
    raise ValueError(f"class_labels: task {task!r} has no class labels (not a "
                     f"classification task); bind CLASS_LABELS or use another "
                     f"initializer (configs/prompts/*.gin).")
  return list(found)


def _vocabulary(vocabulary, name, task=None, feature="targets"):
  """A vocabulary object; a string is the path of a SentencePiece model.

  None: the `feature` vocabulary of the seqio `task` when given (so tasks with their
  own vocabulary tokenize correctly), else the tasks' default vocabulary path.
  """
  if vocabulary is None:
    import tasks  # pylint: disable=g-import-not-at-top  # registers tasks; only if needed
    if task is not None:
      import seqio  # pylint: disable=g-import-not-at-top
      return seqio.get_mixture_or_task(task).output_features[feature].vocabulary
    vocabulary = tasks.vocabulary_path()  # gin / $PROMPT_TUNING_VOCAB aware
  if isinstance(vocabulary, (str, os.PathLike)):
    return _sentencepiece(os.fspath(vocabulary))
  if not hasattr(vocabulary, "encode"):
    raise ValueError(f"{name}: vocabulary {vocabulary!r} has no `encode` method.")
  return vocabulary


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
