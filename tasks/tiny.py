"""The bundled toy tasks of the tiny T5 (`prompt_tuning/assets/tiny_t5/`).

For each task of `prompt_tuning.tiny.corpus.TASKS` (sentiment, mood, topic, count,
subject, object, last) two seqio tasks are registered:

  tiny_<task>           "sentiment: the happy dog sees a car ." -> "positive"
  taskless_tiny_<task>  "the happy dog sees a car ."            -> "positive"

plus the mixtures `tiny_multitask` / `taskless_tiny_multitask` over all of them, and
`taskless_tiny_sentiment_topic` (two taskless members, for multi-task prompts).
The taskless twin drops the task word with the project-wide
`tasks.preprocessors.remove_leading_word` (the paper's taskless setting). Data are
generated on the fly from a seed: the same split always holds the same examples,
and no sentence of `validation`/`test` was seen in pretraining (the corpus assigns
each sentence to one split by a hash of its text).

These tasks use the tiny model's own vocabulary (`VOCABULARY`, the bundled
SentencePiece model plus 100 extra ids), not the T5 one of the other tasks.
Labels of the classification tasks (`sentiment`, `topic`) are registered for
class-label prompt initialization: `tasks.get_label_strings('taskless_tiny_sentiment')`.
"""
from typing import Callable, Dict, Iterator, Mapping

import seqio
import tensorflow as tf

from prompt_tuning.tiny import assets, corpus
from tasks import labels as labels_lib
from tasks import metrics
from tasks import postprocessors
from tasks import preprocessors as prep

PREFIX = "tiny_"
TASKLESS = "taskless_"
# Examples per split; the stream is deterministic, so these are fixed sets.
SPLIT_SIZES: Dict[str, int] = {"train": 50_000, "validation": 500, "test": 500}
DATA_SEED = 0

VOCABULARY = seqio.SentencePieceVocabulary(str(assets.VOCAB_PATH),
                                           extra_ids=assets.EXTRA_IDS)
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True, required=False),
    "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
}
# Longest example of the toy language: 2 prefix tokens + 13 words + EOS; targets
# are single pieces + EOS. Handy as `task_feature_lengths`.
FEATURE_LENGTHS = {"inputs": 20, "targets": 4}


def task_name(task: str, taskless: bool = False) -> str:
  return (TASKLESS if taskless else "") + PREFIX + task


def stream_dataset_fn(name: str, stream: Callable[[str], Iterator[Dict[str, str]]],
                      sizes: Mapping[str, int]):
  """A seqio dataset_fn: the first `sizes[split]` examples of `stream(split)`.

  The order is fixed (seqio shuffles downstream); `name` goes in the error for a
  split the task does not have.
  """

  def dataset_fn(split: str, shuffle_files: bool = False, seed=None):
    del shuffle_files, seed
    if split not in sizes:
      raise ValueError(f"{name} has splits {sorted(sizes)}, not {split!r}.")

    def generate():
      examples = stream(split)
      for _ in range(sizes[split]):
        yield next(examples)

    signature = {"inputs": tf.TensorSpec([], tf.string),
                 "targets": tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=signature)

  return dataset_fn


def _dataset_fn(task: str):
  """A seqio dataset_fn yielding the fixed examples of `task` (with its prefix)."""
  return stream_dataset_fn(
      f"tiny task {task!r}",
      lambda split: corpus.task_examples(task, split, DATA_SEED, with_prefix=True),
      SPLIT_SIZES)


def _postprocess_and_metrics(task: str):
  labels = corpus.LABELS.get(task)
  if labels is None:  # a word-valued task: exact string match
    return (lambda text, example=None, is_target=False: postprocessors.as_text(text),
            [metrics.accuracy])

  def to_class_id(text, example=None, is_target=False):
    return postprocessors.string_label_to_class_id(text, labels, example, is_target)

  return to_class_id, [metrics.accuracy, metrics.invalid_predictions]


def _replace(name: str, provider) -> None:
  for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
    if name in registry.names():
      registry.remove(name)
  registry = (seqio.MixtureRegistry if isinstance(provider, seqio.Mixture)
              else seqio.TaskRegistry)
  registry.add_provider(name, provider)


def register() -> None:
  """(Re-)registers every tiny task, its taskless twin and the two mixtures.

  Called by `tasks.register_all()`, which `import tasks` runs.
  """
  tokenize = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
              seqio.preprocessors.append_eos_after_trim]
  for task in corpus.TASKS:
    source = seqio.FunctionDataSource(_dataset_fn(task), splits=tuple(SPLIT_SIZES),
                                      num_input_examples=dict(SPLIT_SIZES))
    postprocess_fn, metric_fns = _postprocess_and_metrics(task)
    for taskless in (False, True):
      name = task_name(task, taskless)
      text_steps = [prep.remove_leading_word] if taskless else []
      _replace(name, seqio.Task(name, source=source,
                                preprocessors=text_steps + tokenize,
                                output_features=OUTPUT_FEATURES,
                                postprocess_fn=postprocess_fn,
                                metric_fns=metric_fns))
      labels_lib.register_labels(name, corpus.LABELS.get(task),
                                 None if taskless else corpus.task_prefix(task))
  for taskless in (False, True):
    name = task_name("multitask", taskless)
    _replace(name, seqio.Mixture(name, [task_name(t, taskless) for t in corpus.TASKS],
                                 default_rate=1.0))
  # Two tasks with different label sets and no task word: the multi-task prompt
  # walkthrough (docs/TRAINING.md) trains one prompt per member on it.
  name = TASKLESS + PREFIX + "sentiment_topic"
  _replace(name, seqio.Mixture(name, [task_name("sentiment", True),
                                      task_name("topic", True)], default_rate=1.0))

