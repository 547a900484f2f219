"""A deterministic toy language and text-to-text task family for the bundled tiny T5.

Everything the bundled model ever saw is generated here from a seed, so pretraining
(`scripts/pretrain_tiny.py`), the seqio tasks (`tasks/tiny.py`) and the demo all
draw from one definition and nothing is downloaded.

The language: sentences `<subject NP> <verb> <object NP> [<tail>] .` where a noun
phrase is `the|a [colour|size] [mood] noun`. Every sentence carries exactly one
"mood" adjective, positive (`happy`, `lovely`, …) or negative (`sad`, `awful`, …).

The tasks all read the same sentence distribution, so the sentence alone does not
say which task is meant; only the task-name prefix (`sentiment: …`, as in T5's
multitask mixture) or a learned prompt selects one:

  sentiment  positive | negative         (polarity of the mood adjective)
  mood       the mood adjective itself   (`happy`, `sad`, …)
  topic      animal | food | vehicle | person  (category of the subject noun)
  count      five … twelve               (number of words, final "." excluded)
  subject    the subject noun
  object     the object noun
  last       the last word before "."

`sentiment` and `mood` read the same word and differ only in what they output, so a
prompt must pick the skill, not just find the word.

Splits are fixed by a hash of the sentence text: a sentence belongs to exactly one
of `train` / `validation` / `test`, whatever seed produced it, so held-out numbers
are never measured on sentences the model was pretrained on.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

# ----------------------------------------------------------------------------------
# Lexicon.
# ----------------------------------------------------------------------------------
NOUNS: Dict[str, Tuple[str, ...]] = {
    "animal": ("dog", "cat", "bird", "horse", "fish", "cow", "sheep", "mouse",
               "lion", "rabbit"),
    "food": ("apple", "bread", "cheese", "soup", "cake", "rice", "pear", "egg",
             "salad", "pie"),
    "vehicle": ("car", "bus", "train", "boat", "bike", "truck", "plane", "tram",
                "ship", "van"),
    "person": ("man", "woman", "child", "teacher", "doctor", "farmer", "king",
               "singer", "baker", "pilot"),
}
POSITIVE = ("happy", "lovely", "great", "good", "nice", "bright", "kind", "fine",
            "brave", "sweet")
NEGATIVE = ("sad", "awful", "bad", "ugly", "poor", "dull", "rude", "nasty",
            "grim", "sour")
PLAIN_ADJECTIVES = ("red", "blue", "green", "big", "small", "old", "young",
                    "long", "white", "black")
VERBS = ("sees", "likes", "finds", "takes", "wants", "meets", "follows", "helps",
         "watches", "calls")
DETERMINERS = ("the", "a")
TAILS = ("today", "again", "at home", "in the park", "every day", "at night")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                "eight", "nine", "ten", "eleven", "twelve", "thirteen",
                "fourteen", "fifteen")
NOUN_CATEGORY = {n: c for c, ns in NOUNS.items() for n in ns}
ALL_NOUNS = tuple(n for ns in NOUNS.values() for n in ns)

# ----------------------------------------------------------------------------------
# Sentences and documents.
# ----------------------------------------------------------------------------------
SPLITS = ("train", "validation", "test")


def split_of(sentence: str) -> str:
  """The split a sentence belongs to, fixed by its text (80/10/10)."""
  bucket = zlib.crc32(sentence.encode("utf-8")) % 10
  return "validation" if bucket == 8 else "test" if bucket == 9 else "train"


def _noun_phrase(rng: random.Random, noun: str, mood: str = "") -> List[str]:
  words = [rng.choice(DETERMINERS)]
  if rng.random() < 0.5:
    words.append(rng.choice(PLAIN_ADJECTIVES))
  if mood:
    words.append(mood)
  words.append(noun)
  return words


def sentence_words(rng: random.Random) -> List[str]:
  """One sentence as a word list (no final "."), exactly one mood adjective."""
  mood = rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE)
  mood_on_subject = rng.random() < 0.5
  subject = _noun_phrase(rng, rng.choice(ALL_NOUNS), mood if mood_on_subject else "")
  obj = _noun_phrase(rng, rng.choice(ALL_NOUNS), "" if mood_on_subject else mood)
  words = subject + [rng.choice(VERBS)] + obj
  if rng.random() < 0.3:
    words += rng.choice(TAILS).split()
  return words


def sentence_text(words: Sequence[str]) -> str:
  return " ".join(words) + " ."


def sentences(seed: int, split: str) -> Iterator[List[str]]:
  """An endless deterministic stream of sentences (word lists) from one split."""
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  rng = random.Random(seed)
  while True:
    words = sentence_words(rng)
    if split_of(sentence_text(words)) == split:
      yield words


def documents(seed: int, split: str, min_sentences: int = 3,
              max_sentences: int = 8) -> Iterator[str]:
  """An endless stream of plain-text documents of a few sentences each."""
  rng = random.Random(seed + 7919)
  stream = sentences(seed, split)
  while True:
    n = rng.randint(min_sentences, max_sentences)
    yield " ".join(sentence_text(next(stream)) for _ in range(n))


# ----------------------------------------------------------------------------------
# Tasks.
# ----------------------------------------------------------------------------------
def _mood(words: Sequence[str]) -> str:
  for w in words:
    if w in POSITIVE:
      return "positive"
    if w in NEGATIVE:
      return "negative"
  raise ValueError(f"Sentence without a mood adjective: {' '.join(words)!r}.")


def _mood_word(words: Sequence[str]) -> str:
  return next(w for w in words if w in POSITIVE or w in NEGATIVE)


def _nouns(words: Sequence[str]) -> List[str]:
  return [w for w in words if w in NOUN_CATEGORY]


TASKS: Dict[str, Callable[[Sequence[str]], str]] = {
    "sentiment": _mood,
    "mood": _mood_word,
    "topic": lambda words: NOUN_CATEGORY[_nouns(words)[0]],
    "count": lambda words: NUMBER_WORDS[len(words)],
    "subject": lambda words: _nouns(words)[0],
    "object": lambda words: _nouns(words)[1],
    "last": lambda words: words[-1],
}
# Closed label sets of the classification tasks (for class-label prompt init).
LABELS: Dict[str, Tuple[str, ...]] = {
    "sentiment": ("positive", "negative"),
    "topic": tuple(NOUNS),
}
CLASSIFICATION_TASKS = tuple(LABELS)


def task_prefix(task: str) -> str:
  """The textual task marker of the multitask mixture, e.g. `sentiment:`."""
  if task not in TASKS:
    raise ValueError(f"Unknown tiny task {task!r}; expected one of {sorted(TASKS)}.")
  return f"{task}:"


def task_example(task: str, words: Sequence[str], with_prefix: bool = True
                 ) -> Dict[str, str]:
  """`{'inputs', 'targets'}` text for one sentence; `with_prefix=False` drops the
  task marker (the "taskless" setting of Lester et al. 2021)."""
  text = sentence_text(words)
  inputs = f"{task_prefix(task)} {text}" if with_prefix else text
  return {"inputs": inputs, "targets": TASKS[task](words)}


def task_examples(task: str, split: str, seed: int = 0, with_prefix: bool = True
                  ) -> Iterator[Dict[str, str]]:
  """An endless deterministic stream of examples of one task and split.

  Each task reads its own offset of the sentence stream, so tasks do not see the
  very same sentences in the same order.
  """
  offset = sorted(TASKS).index(task) * 1_000_003
  for words in sentences(seed + offset, split):
    yield task_example(task, words, with_prefix)


def mixture_examples(seed: int, split: str, tasks: Sequence[str] = tuple(TASKS)
                     ) -> Iterator[Dict[str, str]]:
  """Examples of all `tasks` with their prefixes, uniformly interleaved."""
  rng = random.Random(seed + 104729)
  streams = {t: task_examples(t, split, seed) for t in tasks}
  names = list(tasks)
  while True:
    yield next(streams[rng.choice(names)])


def vocabulary_text(seed: int = 0, num_documents: int = 4000) -> Iterator[str]:
  """Lines to train the SentencePiece model on: documents plus task examples, so
  task names, labels and number words are pieces of their own."""
  docs = documents(seed, "train")
  mix = mixture_examples(seed, "train")
  for _ in range(num_documents):
    yield next(docs)
    example = next(mix)
    yield f"{example['inputs']} {example['targets']}"
