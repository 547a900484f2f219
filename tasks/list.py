r"""Lists the registered tasks and mixtures with their splits and metrics.

  python -m tasks.list                 # names, splits, metric names
  python -m tasks.list --mock          # + example counts under mock TFDS data
  python -m tasks.list --mock --filter '^super_glue_rte'

`--mock` builds every selected task (not mixtures) on `tfds.testing.mock_data` (random
examples with the real schemas, `--mock_examples` per split) and counts the
examples after preprocessing; nothing is downloaded. Tokenization needs a
SentencePiece model: set PROMPT_TUNING_VOCAB to a local one for `--mock`
(and PROMPT_TUNING_MT5_VOCAB for the `mt5_` tasks).
"""
import argparse
import re
import sys
from typing import Dict, List, Optional, Sequence

import seqio

import tasks  # pylint: disable=unused-import  (registers everything)
from tasks import labels

SEQUENCE_LENGTH = {"inputs": 512, "targets": 128}


def metric_names(task: seqio.Task) -> List[str]:
  """The metric keys a task reports (declared by its metric functions)."""
  names = []
  for fn in task.metric_fns:
    names.extend(getattr(fn, "metric_names", (getattr(fn, "__name__", "?"),)))
  return names


def count_examples(provider, split: str) -> int:
  """Number of preprocessed examples of one split (one epoch, no shuffle)."""
  ds = provider.get_dataset(SEQUENCE_LENGTH, split=split, shuffle=False,
                            num_epochs=1)
  return int(ds.reduce(0, lambda n, _: n + 1).numpy())


def describe(name: str, counts: Optional[Dict[str, int]] = None) -> str:
  """One line: name, kind, splits (with counts), labels and metrics."""
  provider = seqio.get_mixture_or_task(name)
  is_mixture = isinstance(provider, seqio.Mixture)
  splits = sorted(provider.splits)
  if counts is not None:
    split_text = ",".join(f"{s}={counts[s]}" for s in splits)
  else:
    split_text = ",".join(splits)
  if is_mixture:
    detail = "tasks=" + ",".join(t.name for t in provider.tasks)
  else:
    detail = "metrics=" + (",".join(metric_names(provider)) or "-")
  label_strings = labels.get_label_strings(name)
  label_text = f" labels={'|'.join(label_strings)}" if label_strings else ""
  kind = "mixture" if is_mixture else "task"
  return f"{name}\t{kind}\tsplits={split_text}\t{detail}{label_text}"


def selected_names(pattern: Optional[str]) -> List[str]:
  names = sorted(seqio.TaskRegistry.names()) + sorted(
      seqio.MixtureRegistry.names())
  if pattern:
    regex = re.compile(pattern)
    names = [n for n in names if regex.search(n)]
  return names


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m tasks.list", description=__doc__.splitlines()[0])
  parser.add_argument("--mock", action="store_true",
                      help="count examples per split under mock TFDS data")
  parser.add_argument("--mock_examples", type=int, default=3,
                      help="mock examples per TFDS split (with --mock)")
  parser.add_argument("--filter", default=None,
                      help="regular expression the names must contain")
  args = parser.parse_args(argv)
  names = selected_names(args.filter)
  if not names:
    print(f"No task or mixture matches {args.filter!r}.", file=sys.stderr)
    return 1
  if not args.mock:
    for name in names:
      print(describe(name))
    return 0
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(
      num_examples=args.mock_examples,
      policy=tfds.testing.MockPolicy.USE_CODE):
    for name in names:
      provider = seqio.get_mixture_or_task(name)
      counts = None
      if isinstance(provider, seqio.Task):  # Mixtures list their tasks.
        counts = {s: count_examples(provider, s) for s in provider.splits}
      print(describe(name, counts), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
