"""The SentencePiece vocabulary shared by every registered task.

The path is resolved *each time the vocabulary is used*, not when `tasks` is
imported, so both override routes work no matter the import order:

  1. a gin binding (wins when set):
       tasks.vocab.vocabulary_path.path = "/path/to/sentencepiece.model"
  2. the environment variable `PROMPT_TUNING_VOCAB`;
  3. otherwise the public T5 vocabulary `DEFAULT_VOCAB_PATH`.

The vocabulary always carries `EXTRA_IDS` (100) sentinel ids, like T5's, so a
32,000-piece model gives 32,100 ids (`vocab_size`).
"""
import os
import threading
from typing import Callable, Dict, Optional

import gin
import seqio
import tensorflow as tf
import tensorflow_text as tf_text

DEFAULT_VOCAB_PATH = (
    "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model")
EXTRA_IDS = 100
ENV_VAR = "PROMPT_TUNING_VOCAB"
# The mT5 vocabulary (250,000 pieces) of the `mt5_` task twins; it is not
# bundled, so it is looked up the same lazy way under its own names.
DEFAULT_MT5_VOCAB_PATH = (
    "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model")
MT5_ENV_VAR = "PROMPT_TUNING_MT5_VOCAB"


@gin.configurable(module="tasks.vocab")
def vocabulary_path(path: Optional[str] = None) -> str:
  """Returns the SentencePiece model path the tasks use right now.

  Args:
    path: bind this with gin to pick a model explicitly; it beats the
      environment variable.

  Returns:
    `path` if given, else `$PROMPT_TUNING_VOCAB` if set and non-empty, else
    `DEFAULT_VOCAB_PATH`.
  """
  if path:
    return path
  return os.environ.get(ENV_VAR) or DEFAULT_VOCAB_PATH


@gin.configurable(module="tasks.vocab")
def mt5_vocabulary_path(path: Optional[str] = None) -> str:
  """The mT5 SentencePiece model of the `mt5_` tasks right now.

  Args:
    path: bind with gin (`tasks.vocab.mt5_vocabulary_path.path = ...`); it
      beats the environment variable.

  Returns:
    `path` if given, else `$PROMPT_TUNING_MT5_VOCAB` if set and non-empty,
    else `DEFAULT_MT5_VOCAB_PATH`.
  """
  if path:
    return path
  return os.environ.get(MT5_ENV_VAR) or DEFAULT_MT5_VOCAB_PATH


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` whose model file is looked up lazily.

  Every use asks `vocabulary_path()` for the current path and delegates to a
  plain `seqio.SentencePieceVocabulary` for that path (cached per path), so a
  gin binding or environment variable set after `import tasks` still applies.
  It compares equal to a plain `SentencePieceVocabulary` of the same file and
  number of extra ids, so model/task vocabulary checks keep working.
  """

  def __init__(self, extra_ids: int = EXTRA_IDS,
               path_fn: Callable[[], str] = vocabulary_path,
               gin_name: str = "tasks.vocab.vocabulary_path.path",
               env_var: str = ENV_VAR):
    """Constructor.

    Args:
      extra_ids: sentinel ids appended to the model's pieces.
      path_fn: returns the model path at the time of use.
      gin_name, env_var: the two overrides, named in the error when the model
        cannot be read.
    """
    super().__init__(sentencepiece_model_file="", extra_ids=extra_ids)
    self._path_fn = path_fn
    self._gin_name = gin_name
    self._env_var = env_var
    self._by_path: Dict[str, seqio.SentencePieceVocabulary] = {}
    self._tf_tokenizers: Dict[str, tf_text.SentencepieceTokenizer] = {}
    self._lock = threading.Lock()

  def resolve(self) -> seqio.SentencePieceVocabulary:
    """Returns the plain vocabulary for the currently configured path."""
    path = self._path_fn()
    with self._lock:
      vocab = self._by_path.get(path)
      if vocab is None:
        vocab = seqio.SentencePieceVocabulary(path, extra_ids=self._extra_ids)
        self._by_path[path] = vocab
    return vocab

  @property
  def sentencepiece_model_file(self) -> str:
    return self._path_fn()

  def _model_context(self):
    path = self._path_fn()
    try:
      return self.resolve()._model_context()  # pylint: disable=protected-access
    except Exception as e:  # pylint: disable=broad-except
      raise OSError(
          f"Cannot load the SentencePiece model {path!r} used by the tasks. "
          f"Point the tasks at a readable model with the gin binding "
          f"`{self._gin_name} = '/path/sentencepiece.model'` "
          f"or the environment variable {self._env_var}.") from e

  @property
  def tf_tokenizer(self):
    """A TF SentencePiece tokenizer built once per path, outside any graph.

    seqio's parent class builds a new tokenizer inside every traced function,
    which embeds the whole model in each tf.data graph; building it eagerly
    (`tf.init_scope`) lets pipelines share one model resource instead.
    """
    path = self._path_fn()
    with self._lock:
      tokenizer = self._tf_tokenizers.get(path)
    if tokenizer is None:
      sp_model = self.sp_model
      with tf.init_scope():
        tokenizer = tf_text.SentencepieceTokenizer(model=sp_model)
      with self._lock:
        tokenizer = self._tf_tokenizers.setdefault(path, tokenizer)
    return tokenizer

  def __getstate__(self):
    state = super().__getstate__()
    state.pop("_lock", None)
    state["_by_path"] = {}
    state["_tf_tokenizers"] = {}
    return state

  def __setstate__(self, state):
    super().__setstate__(state)
    self._lock = threading.Lock()

  def __eq__(self, other):
    if isinstance(other, LazySentencePieceVocabulary):
      other = other.resolve()
    if not isinstance(other, seqio.SentencePieceVocabulary):
      return False
    return self.resolve() == other

  __hash__ = None

  def __str__(self) -> str:
    return (f"LazySentencePieceVocabulary(file={self._path_fn()}, "
            f"extra_ids={self._extra_ids})")


# The one instance every task uses (seqio mixtures require identical features).
VOCABULARY = LazySentencePieceVocabulary()


def get_vocabulary() -> LazySentencePieceVocabulary:
  """Returns the shared lazily-resolved vocabulary of all registered tasks."""
  return VOCABULARY


def resolved_vocabulary() -> seqio.SentencePieceVocabulary:
  """Returns a plain `seqio.SentencePieceVocabulary` for the current path."""
  return VOCABULARY.resolve()


def task_vocabulary(task_name: str) -> seqio.Vocabulary:
  """The targets vocabulary of a registered task or mixture.

  Most tasks use the shared `VOCABULARY`; tasks registered with their own
  (e.g. the bundled demo tasks) return theirs.
  """
  provider = seqio.get_mixture_or_task(task_name)
  return provider.output_features["targets"].vocabulary


def output_features(vocabulary: Optional[seqio.Vocabulary] = None
                    ) -> Dict[str, seqio.Feature]:
  """Text-to-text features: EOS appended to inputs and targets (T5's)."""
  vocabulary = vocabulary or VOCABULARY
  return {
      "inputs": seqio.Feature(
          vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


OUTPUT_FEATURES = output_features()

# The one mT5 instance every `mt5_` task uses.
MT5_VOCABULARY = LazySentencePieceVocabulary(
    path_fn=mt5_vocabulary_path,
    gin_name="tasks.vocab.mt5_vocabulary_path.path", env_var=MT5_ENV_VAR)
MT5_OUTPUT_FEATURES = output_features(MT5_VOCABULARY)
