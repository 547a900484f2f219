"""Tasks over your own JSONL or TSV files.

File formats (UTF-8, one example per line, "\\n" or "\\r\\n" line ends):

  JSONL  {"inputs": "rte hypothesis: ...", "targets": "entailment"}
         each line one JSON object with string fields "inputs" and "targets"
         (other fields are ignored).
  TSV    inputs<TAB>targets
         exactly two tab-separated fields; a first line that is exactly
         "inputs<TAB>targets" is a header. No quoting or escapes, so fields
         cannot contain tabs or newlines (use JSONL for such text).

Every line must be an example: an empty line, bad JSON, a missing field, a
non-string value, invalid UTF-8, an empty target or a target outside the
given label list raises `LocalDataError` naming the file and line. Nothing is
skipped silently. Files are read and checked when the task is registered.

In gin (one binding per argument; registering twice with the same arguments
is a no-op, so the macro may be evaluated many times):

  MIXTURE_OR_TASK_NAME = @tasks.local.register_local_task()
  tasks.local.register_local_task.name = "my_sentiment"
  tasks.local.register_local_task.train = "/data/train.jsonl"
  tasks.local.register_local_task.validation = "/data/dev.jsonl"
  tasks.local.register_local_task.labels = ["negative", "positive"]
"""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import gin
import seqio
import tensorflow as tf

from prompt_tuning.errors import UserError
from tasks import metrics
from tasks import postprocessors
from tasks import registry
from tasks import text_metrics

Example = Dict[str, str]
TSV_HEADER = "inputs\ttargets"


class LocalDataError(UserError, ValueError):
  """A local data file (or byte string) is not a valid JSONL/TSV task file."""


def _fail(source: str, line: int, problem: str) -> LocalDataError:
  return LocalDataError(f"{source}:{line}: {problem}")


def _lines(data: bytes, source: str):
  """Yields (line number, text) for each line of `data` (UTF-8)."""
  if not data:
    raise LocalDataError(f"{source}: the file is empty; it needs at least one "
                         "example line.")
  raw_lines = data.split(b"\n")
  if raw_lines[-1] == b"":  # A final newline ends the last line.
    raw_lines.pop()
  for number, raw in enumerate(raw_lines, start=1):
    if raw.endswith(b"\r"):
      raw = raw[:-1]
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise _fail(source, number, f"not valid UTF-8 ({e.reason} at byte "
                  f"{e.start}); save the file as UTF-8.") from None
    if number == 1:
      text = text.lstrip("\ufeff")  # Tolerate a UTF-8 byte-order mark.
    if not text.strip():
      raise _fail(source, number, "empty line; every line must be an "
                  "example (remove blank lines).")
    yield number, text


def _check_text(value, field: str, source: str, line: int) -> str:
  if not isinstance(value, str):
    raise _fail(source, line, f'"{field}" must be a string, found '
                f"{type(value).__name__}.")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    raise _fail(source, line, f'"{field}" holds an unpaired surrogate escape '
                "that is not valid text.") from None
  return value


def _check_example(example: Example, labels: Optional[Sequence[str]],
                   source: str, line: int) -> Example:
  if not example["targets"]:
    raise _fail(source, line, '"targets" is empty; every example needs a '
                "target text.")
  if labels is not None and example["targets"] not in labels:
    raise _fail(source, line, f'target {example["targets"]!r} is not one of '
                f"the labels {list(labels)}; fix the line or the label list.")
  return example


def parse_jsonl(data: bytes, source: str = "<bytes>",
                labels: Optional[Sequence[str]] = None) -> List[Example]:
  """Parses JSONL bytes into [{"inputs": str, "targets": str}, ...].

  Raises:
    LocalDataError: for any malformed line (message "source:line: problem").
  """
  examples = []
  for number, text in _lines(data, source):
    try:
      record = json.loads(text)
    except (ValueError, RecursionError) as e:
      raise _fail(source, number, f"not valid JSON ({e}).") from None
    if not isinstance(record, dict):
      raise _fail(source, number, "expected a JSON object like "
                  '{"inputs": "...", "targets": "..."}, found '
                  f"{type(record).__name__}.")
    example = {}
    for field in ("inputs", "targets"):
      if field not in record:
        raise _fail(source, number, f'missing the "{field}" field.')
      example[field] = _check_text(record[field], field, source, number)
    examples.append(_check_example(example, labels, source, number))
  return examples


def parse_tsv(data: bytes, source: str = "<bytes>",
              labels: Optional[Sequence[str]] = None) -> List[Example]:
  """Parses TSV bytes (inputs<TAB>targets, optional header) like parse_jsonl."""
  examples = []
  for number, text in _lines(data, source):
    if number == 1 and text == TSV_HEADER:
      continue
    fields = text.split("\t")
    if len(fields) != 2:
      raise _fail(source, number, f"expected 2 tab-separated fields (inputs, "
                  f"targets), found {len(fields)}.")
    example = {"inputs": _check_text(fields[0], "inputs", source, number),
               "targets": _check_text(fields[1], "targets", source, number)}
    examples.append(_check_example(example, labels, source, number))
  if not examples:
    raise LocalDataError(f"{source}: only a header; add example lines.")
  return examples


def read_examples(path: str,
                  labels: Optional[Sequence[str]] = None) -> List[Example]:
  """Reads a .jsonl or .tsv file (local or any tf.io.gfile path).

  Raises:
    LocalDataError: unknown extension, missing file or malformed line.
  """
  extension = os.path.splitext(path)[1].lower()
  parsers = {".jsonl": parse_jsonl, ".json": parse_jsonl, ".tsv": parse_tsv}
  if extension not in parsers:
    raise LocalDataError(f"{path}: unknown file type {extension!r}; use "
                         ".jsonl (or .json lines) or .tsv.")
  if not tf.io.gfile.exists(path):
    raise LocalDataError(f"{path}: no such file.")
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  return parsers[extension](data, source=path, labels=labels)


def _read_labels(labels: Union[None, str, Sequence[str]]):
  if labels is None:
    return None
  if isinstance(labels, str):  # A file with one label per line.
    with tf.io.gfile.GFile(labels, "r") as f:
      labels = [line.rstrip("\r\n") for line in f if line.strip()]
  labels = tuple(labels)
  if not labels or len(set(labels)) != len(labels) or not all(
      isinstance(l, str) and l for l in labels):
    raise LocalDataError(f"labels must be distinct non-empty strings, got "
                         f"{list(labels)}.")
  return labels


_REGISTERED: Dict[str, Tuple] = {}


def _dataset_fn(examples: Dict[str, List[Example]]):
  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed  # One in-memory "file"; the task shuffles.
    rows = examples[split]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [r["inputs"] for r in rows],
        "targets": [r["targets"] for r in rows],
    })
  return dataset_fn


@gin.configurable(module="tasks.local")
def register_local_task(name: str = gin.REQUIRED,
                        train: Optional[str] = None,
                        validation: Optional[str] = None,
                        test: Optional[str] = None,
                        labels: Union[None, str, Sequence[str]] = None) -> str:
  """Registers a task over local JSONL/TSV files and returns its name.

  Args:
    name: the task name (also `taskless_<name>`, identical: inputs are used
      as written).
    train, validation, test: file paths per split (at least one).
    labels: the label strings (list, or a file with one per line) of a
      classification task: targets must be labels; metrics are accuracy,
      macro F1 and `invalid_predictions`. Without labels: exact-match
      `sequence_accuracy` and BLEU.

  Returns:
    `name`, so gin can bind `MIXTURE_OR_TASK_NAME = @register_local_task()`.

  Raises:
    LocalDataError: a file is missing or malformed, or no split is given.
  """
  label_strings = _read_labels(labels)
  files = {s: p for s, p in (("train", train), ("validation", validation),
                             ("test", test)) if p}
  if not files:
    raise LocalDataError(f"register_local_task({name!r}) needs at least one "
                         "of train=, validation=, test= (file paths).")
  key = (tuple(sorted(files.items())), label_strings)
  if _REGISTERED.get(name) == key and name in seqio.TaskRegistry.names():
    return name
  examples = {s: read_examples(p, label_strings) for s, p in files.items()}
  if label_strings:
    metric_fns = (metrics.accuracy,
                  metrics.mean_multiclass_f1(len(label_strings)),
                  metrics.invalid_predictions)
    postprocess_fn = postprocessors.ClassLabel(label_strings)
  else:
    metric_fns = (sequence_accuracy, text_metrics.bleu)
    postprocess_fn = None
  registry.add_task(
      name,
      source=seqio.FunctionDataSource(
          _dataset_fn(examples), splits=list(files),
          num_input_examples={s: len(e) for s, e in examples.items()}),
      text_preprocessors=[],
      metric_fns=metric_fns,
      postprocess_fn=postprocess_fn,
      label_strings=label_strings)
  _REGISTERED[name] = key
  return name


def data_files(mixture_or_task_name: str) -> Dict[str, Dict[str, str]]:
  """`{task: {split: path}}` of the local-file tasks in a task or mixture (empty
  for other tasks): what a run's identity fingerprints."""
  try:
    task = seqio.get_mixture_or_task(mixture_or_task_name)
  except (ValueError, KeyError):
    return {}
  out = {}
  for name in [t.name for t in getattr(task, "tasks", [task])]:
    own = name if name in _REGISTERED else name.replace("taskless_", "", 1)
    if own in _REGISTERED:
      out[name] = dict(_REGISTERED[own][0])
  return out


@metrics.returns("sequence_accuracy")
def sequence_accuracy(targets, predictions):
  """100 * fraction of predictions exactly equal to their target text."""
  return {"sequence_accuracy": metrics.accuracy(targets, predictions)[
      "accuracy"]}
