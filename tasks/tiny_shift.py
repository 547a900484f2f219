"""Domain-shifted variants of three tiny tasks, for zero-shot transfer experiments.

The paper's domain-shift experiments (Lester et al. 2021, section 6: SQuAD -> MRQA
out-of-domain sets, QQP <-> MRPC) in the bundled model's toy language
(`prompt_tuning.tiny.corpus`): the task stays the same, the input distribution moves.
For `sentiment`, `topic` and `count` (the number of words, as a word):

  tiny_shift_<task>_source     train/eval domain: half of the nouns (5 per category)
                               and half of the mood adjectives (5 + 5), no sentence
                               tail ("today", "in the park", …)
  tiny_shift_<task>_new_nouns  the other nouns (topic: words never seen with a label)
  tiny_shift_<task>_new_moods  the other mood adjectives (sentiment: the same)
  tiny_shift_<task>_long       source words, but every noun phrase has a plain
                               adjective and every sentence a tail (longer inputs)
  tiny_shift_<task>_all_new    new nouns + new moods + long

each with its `taskless_` twin (no task word, the setting trained on), and the
mixture `[taskless_]tiny_shift_<task>_all_domains` of all five (one evaluation call
scores every domain). The frozen
model saw every word in pretraining, so what a target domain tests is whether tuning
kept that knowledge or fitted the source domain. For `count`, `long` also moves the
labels: source sentences have six to eight words, long ones nine to eleven, counts
the frozen model learned in pretraining but tuning never sees. Splits are fixed by
the corpus's sentence hash, so validation/test sentences were never pretrained on.
The labels of sentiment and topic are registered for class-label prompt
initialization (count has none: bind CLASS_LABELS to number words).
"""
from __future__ import annotations

import dataclasses
import functools
import random
import zlib
from typing import Dict, Iterator, List, Tuple

import seqio

from prompt_tuning.tiny import corpus
from tasks import labels as labels_lib
from tasks import metrics
from tasks import postprocessors
from tasks import preprocessors as prep
from tasks import registry
from tasks import tiny

TASKS = ("sentiment", "topic", "count")
SPLIT_SIZES: Dict[str, int] = {"train": 50_000, "validation": 500, "test": 500}
DATA_SEED = 0


@dataclasses.dataclass(frozen=True)
class Domain:
  """Which words a domain draws from, and how long its sentences are."""
  nouns: Tuple[str, ...]
  positive: Tuple[str, ...]
  negative: Tuple[str, ...]
  adjective_rate: float = 0.5  # a plain adjective in a noun phrase
  tail_rate: float = 0.0  # a tail after the object


def _halves(words: Tuple[str, ...]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
  return words[:len(words) // 2], words[len(words) // 2:]


SEEN_NOUNS = tuple(n for ns in corpus.NOUNS.values() for n in _halves(ns)[0])
NEW_NOUNS = tuple(n for ns in corpus.NOUNS.values() for n in _halves(ns)[1])
SEEN_POSITIVE, NEW_POSITIVE = _halves(corpus.POSITIVE)
SEEN_NEGATIVE, NEW_NEGATIVE = _halves(corpus.NEGATIVE)

DOMAINS: Dict[str, Domain] = {
    "source": Domain(SEEN_NOUNS, SEEN_POSITIVE, SEEN_NEGATIVE),
    "new_nouns": Domain(NEW_NOUNS, SEEN_POSITIVE, SEEN_NEGATIVE),
    "new_moods": Domain(SEEN_NOUNS, NEW_POSITIVE, NEW_NEGATIVE),
    "long": Domain(SEEN_NOUNS, SEEN_POSITIVE, SEEN_NEGATIVE, adjective_rate=1.0,
                   tail_rate=1.0),
    "all_new": Domain(NEW_NOUNS, NEW_POSITIVE, NEW_NEGATIVE, adjective_rate=1.0,
                      tail_rate=1.0),
}
TARGETS = tuple(d for d in DOMAINS if d != "source")


def task_name(task: str, domain: str, taskless: bool = True) -> str:
  """`taskless_tiny_shift_<task>_<domain>` (or without `taskless_`)."""
  return f"{'taskless_' if taskless else ''}tiny_shift_{task}_{domain}"


def mixture_name(task: str, taskless: bool = True) -> str:
  """`taskless_tiny_shift_<task>_all_domains`: the source and every target."""
  return f"{'taskless_' if taskless else ''}tiny_shift_{task}_all_domains"


def _noun_phrase(rng: random.Random, noun: str, mood: str, domain: Domain
                 ) -> List[str]:
  words = [rng.choice(corpus.DETERMINERS)]
  if rng.random() < domain.adjective_rate:
    words.append(rng.choice(corpus.PLAIN_ADJECTIVES))
  if mood:
    words.append(mood)
  return words + [noun]


def sentence_words(rng: random.Random, domain: Domain) -> List[str]:
  """One sentence of the domain (word list, no final "."), one mood adjective."""
  mood = rng.choice(domain.positive if rng.random() < 0.5 else domain.negative)
  on_subject = rng.random() < 0.5
  subject = _noun_phrase(rng, rng.choice(domain.nouns), mood if on_subject else "",
                         domain)
  obj = _noun_phrase(rng, rng.choice(domain.nouns), "" if on_subject else mood,
                     domain)
  words = subject + [rng.choice(corpus.VERBS)] + obj
  if rng.random() < domain.tail_rate:
    words += rng.choice(corpus.TAILS).split()
  return words


def examples(task: str, domain: str, split: str, seed: int = DATA_SEED
             ) -> Iterator[Dict[str, str]]:
  """An endless deterministic stream of `{'inputs', 'targets'}` (task word kept)."""
  if task not in TASKS or domain not in DOMAINS:
    raise ValueError(f"No shifted task {task!r}/{domain!r}; tasks {TASKS}, domains "
                     f"{sorted(DOMAINS)}.")
  rng = random.Random(seed + zlib.crc32(f"{task}/{domain}".encode()))
  while True:
    words = sentence_words(rng, DOMAINS[domain])
    if corpus.split_of(corpus.sentence_text(words)) == split:
      yield corpus.task_example(task, words, with_prefix=True)


def _dataset_fn(task: str, domain: str):
  return tiny.stream_dataset_fn(task_name(task, domain),
                                lambda split: examples(task, domain, split),
                                SPLIT_SIZES)


def _to_class_id(text, example=None, is_target=False, *, labels):
  return postprocessors.string_label_to_class_id(text, labels, example, is_target)


def register() -> None:
  """(Re-)registers every shifted task and its taskless twin."""
  tokenize = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
              seqio.preprocessors.append_eos_after_trim]
  for task in TASKS:
    labels = corpus.LABELS.get(task)
    if labels is None:  # count: the number word, exact match
      postprocess_fn = (lambda text, example=None, is_target=False:
                        postprocessors.as_text(text))
      metric_fns = [metrics.accuracy]
    else:
      postprocess_fn = functools.partial(_to_class_id, labels=labels)
      metric_fns = [metrics.accuracy, metrics.invalid_predictions]

    for domain in DOMAINS:
      source = seqio.FunctionDataSource(_dataset_fn(task, domain),
                                        splits=tuple(SPLIT_SIZES),
                                        num_input_examples=dict(SPLIT_SIZES))
      for taskless in (False, True):
        name = task_name(task, domain, taskless)
        if name in seqio.TaskRegistry.names():
          seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add_provider(name, seqio.Task(
            name, source=source,
            preprocessors=([prep.remove_leading_word] if taskless else []) + tokenize,
            output_features=tiny.OUTPUT_FEATURES, postprocess_fn=postprocess_fn,
            metric_fns=metric_fns))
        labels_lib.register_labels(name, labels,
                                   None if taskless else corpus.task_prefix(task))
    # The pretraining-objective ablation's "span corruption + sentinel" (Lester et
    # al. 2021, section 3.2): <extra_id_0> after the inputs and before the targets.
    registry.add_sentinel_twin(task_name(task, "source"))
    for taskless in (False, True):  # every domain, for one evaluation call
      name = mixture_name(task, taskless)
      if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
      seqio.MixtureRegistry.add(name, [task_name(task, d, taskless) for d in DOMAINS],
                                default_rate=1.0)


register()
