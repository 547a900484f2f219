"""Inputs and outputs of `python -m prompt_tuning.infer`: requests, JSONL, progress.

Input, one request per line (JSONL), or one per example of a seqio task split:

  {"prompt": "rte", "inputs": "rte sentence1: … sentence2: …", "id": 17}

`prompt` may be left out when only one prompt (or ensemble) is served; any other
field (here `id`) is copied to the output record unchanged. A line that cannot be
served — invalid JSON or UTF-8, not an object, no string `inputs`, an unknown or
missing `prompt` — becomes a `Request` carrying an `error`, so the output keeps
one record per input line, in order: `{"line": <1-based line>, "error": "…"}`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import IO, Any, Dict, Iterator, Optional, Sequence

import numpy as np

from prompt_tuning.run_dir.summaries import format_duration


RESERVED = ("prompt", "inputs", "prediction", "scores", "votes", "truncated")


@dataclasses.dataclass
class Request:
  """One input to serve (or to answer with an error record).

  Attributes:
    line: the 1-based input line (JSONL), or example number (task split).
    prompt: the served name (a bank prompt or an ensemble).
    inputs: the input text, echoed in the output.
    tokens: already tokenized inputs (task splits), not yet trimmed; None for
      text that the server tokenizes.
    extra: other fields, copied to the output record (e.g. `id`, `targets`).
    error: why this line cannot be served; the output is an error record.
  """
  line: int
  prompt: Optional[str] = None
  inputs: Optional[str] = None
  tokens: Optional[Sequence[int]] = None
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
  error: Optional[str] = None

  def error_record(self) -> Dict[str, Any]:
    return {"line": self.line, "error": self.error}


# ------------------------------------------------------------------------------------
# JSONL requests.
# ------------------------------------------------------------------------------------


def parse_line(line: int, raw: bytes, names: Sequence[str]) -> Request:
  """One JSONL line → a `Request` (with `error` set when it cannot be served).

  Args:
    line: its 1-based line number.
    raw: the bytes of the line, without the line break.
    names: the names that can be served; with exactly one, `prompt` is optional.
  """
  def bad(message: str) -> Request:
    return Request(line=line, error=message)

  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return bad(f"not UTF-8 text ({e.reason} at byte {e.start})")
  if not text.strip():
    return bad("empty line (expected a JSON object with \"inputs\")")
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    return bad(f"invalid JSON: {e.msg} at column {e.colno}")
  if not isinstance(record, dict):
    return bad(f"expected a JSON object like {{\"prompt\": \"name\", \"inputs\": "
               f"\"text\"}}, got a {type(record).__name__}")
  if "inputs" not in record:
    return bad("missing \"inputs\"")
  if not isinstance(record["inputs"], str):
    return bad(f"\"inputs\" must be a string, got {type(record['inputs']).__name__}")
  prompt = record.get("prompt")
  if prompt is None:
    if len(names) != 1:
      return bad(f"missing \"prompt\": {len(names)} prompts are served, name one of "
                 f"{list(names)}")
    prompt = names[0]
  if not isinstance(prompt, str):
    return bad(f"\"prompt\" must be a string, got {type(prompt).__name__}")
  if prompt not in names:
    return bad(f"unknown prompt {prompt!r}; served prompts: {list(names)}")
  extra = {k: v for k, v in record.items() if k not in RESERVED}
  return Request(line=line, prompt=prompt, inputs=record["inputs"], extra=extra)


def _open_input(path: str) -> IO[bytes]:
  if path == "-":
    return sys.stdin.buffer
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Input file {path} not found (--input_file / "
                            "--gin.INFER_INPUT).")
  return open(path, "rb")


def read_jsonl(path: str, names: Sequence[str]) -> Iterator[Request]:
  """Requests from a JSONL file (`-` = stdin), one per line, lazily, in order."""
  f = _open_input(path)
  try:
    for number, raw in enumerate(f, start=1):
      yield parse_line(number, raw.rstrip(b"\r\n"), names)
  finally:
    if f is not sys.stdin.buffer:
      f.close()


def count_lines(path: str) -> Optional[int]:
  """The number of lines `read_jsonl` will yield (None for stdin)."""
  if path == "-":
    return None
  count, last = 0, b"\n"
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      count += block.count(b"\n")
      last = block[-1:]
  return count + (last != b"\n")


# ------------------------------------------------------------------------------------
# seqio task splits.
# ------------------------------------------------------------------------------------


def _text(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  if isinstance(value, np.ndarray):
    return [_text(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  return value


def read_task(mixture_or_task_name: str, split: str, prompt: str,
              max_examples: Optional[int] = None) -> Iterator[Request]:
  """Requests from a registered seqio task (or each task of a mixture), in order.

  Inputs are the task's tokenized `inputs` before trimming (the server trims and
  counts truncation as for JSONL); records carry `task` and, when the task keeps
  them, the `targets` text. Unknown tasks and splits raise at once.
  """
  from prompt_tuning import data as data_lib  # pylint: disable=g-import-not-at-top
  tasks = data_lib.tasks_of(mixture_or_task_name)
  for task in tasks:
    if split not in task.splits:
      raise ValueError(f"Task {task.name!r} has no split {split!r}; it has "
                       f"{list(task.splits)}. Set --gin.INFER_SPLIT.")
  return _task_requests(tasks, split, prompt, max_examples)


def _task_requests(tasks, split, prompt, max_examples) -> Iterator[Request]:
  number = 0
  for task in tasks:
    ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1,
                          trim_output_features=False)
    if max_examples:
      ds = ds.take(max_examples)
    for ex in ds.as_numpy_iterator():
      number += 1
      extra = {"task": task.name}
      if "targets_pretokenized" in ex:
        extra["targets"] = _text(ex["targets_pretokenized"])
      inputs = _text(ex.get("inputs_pretokenized", b""))
      yield Request(line=number, prompt=prompt, inputs=inputs,
                    tokens=[int(t) for t in ex["inputs"]], extra=extra)


# ------------------------------------------------------------------------------------
# Output and progress.
# ------------------------------------------------------------------------------------


class JsonlWriter:
  """Writes one JSON object per line to a file (parents created) or stdout (`-`)."""

  def __init__(self, path: str):
    self.path = path
    if path == "-":
      self._file = sys.stdout
    else:
      pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
      self._file = open(path, "w", encoding="utf-8")
    self.count = 0

  def write(self, record: Dict[str, Any]) -> None:
    self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    self.count += 1

  def close(self) -> None:
    self._file.flush()
    if self._file is not sys.stdout:
      self._file.close()

  def __enter__(self) -> "JsonlWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def summary_line(*, lines: int, predictions: int, errors: int, truncated: int,
                 input_length: int, batches: int, batch_size: int, seconds: float,
                 output: str) -> str:
  """The one-line account printed at the end of a run."""
  where = "stdout" if output == "-" else output

  def n(count: int, word: str, plural: str = "s") -> str:
    return f"{count} {word}{plural * (count != 1)}"

  return (f"infer: {n(lines, 'line')} -> {where}: {n(predictions, 'prediction')}, "
          f"{n(errors, 'error record')}, {n(truncated, 'input')} truncated to "
          f"{input_length} tokens; {n(batches, 'batch', 'es')} of {batch_size} in "
          f"{format_duration(seconds)}")
