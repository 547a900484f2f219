"""Training output for people and scripts: TensorBoard, metrics.jsonl, console.

  MODEL_DIR/train/events.*        train loss, learning rate, steps/s (TensorBoard)
  MODEL_DIR/eval/events.*         eval metrics per task, a few decoded examples
  MODEL_DIR/metrics.jsonl         one JSON line per evaluation:
                                  {"step": 1000, "task": "...", "accuracy": 91.2, ...}

Only process 0 writes; on other processes every method is a no-op.
"""
from __future__ import annotations

import json
import logging
import math
import pathlib
import sys
import time
from typing import IO, Any, Dict, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.errors import write_error
from prompt_tuning.run_dir.layout import METRICS_JSONL


def _plain(value: Any) -> Any:
  """A JSON-friendly version of a metric value (numpy scalars → floats)."""
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class Summaries:
  """TensorBoard event files + `metrics.jsonl`, written by process 0 only."""

  def __init__(self, model_dir: str, enabled: bool = True):
    self.model_dir = pathlib.Path(model_dir)
    self.enabled = enabled
    self._writers: Dict[str, Any] = {}

  def _writer(self, name: str):
    if name not in self._writers:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._writers[name] = tf.summary.create_file_writer(str(self.model_dir / name))
    return self._writers[name]

  def _write(self, split: str, step: int, values: Mapping[str, Any], plugin: str,
             dtype) -> None:
    """Writes tensors tagged for a TensorBoard plugin ('scalars' or 'text').

    Uses `tf.summary.write` with the plugin's metadata, which is what
    `tf.summary.scalar` / `text` write, without needing the tensorboard package.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin),
        data_class=(summary_pb2.DATA_CLASS_SCALAR if plugin == "scalars"
                    else summary_pb2.DATA_CLASS_TENSOR))
    try:
      with self._writer(split).as_default():
        for name, value in values.items():
          tf.summary.write(name, tf.constant(value, dtype=dtype), step=step,
                           metadata=metadata)
      self._writer(split).flush()
    except (tf.errors.OpError, OSError) as e:  # a full disk: one line, not TF's
      raise write_error(self.model_dir / split, e) from e

  def scalars(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
    if not self.enabled:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    values = {k: float(v) for k, v in values.items()
              if v is not None and np.ndim(v) == 0}
    self._write(split, step, values, "scalars", tf.float32)

  def texts(self, step: int, values: Mapping[str, str], split: str = "eval") -> None:
    if not self.enabled:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._write(split, step, values, "text", tf.string)

  def record(self, step: int, task: str, metrics: Mapping[str, Any],
             **extra: Any) -> None:
    """Appends one line to `MODEL_DIR/metrics.jsonl`."""
    if not self.enabled:
      return
    line = {"step": int(step), "task": task}
    line.update({k: _plain(v) for k, v in metrics.items()})
    line.update({k: _plain(v) for k, v in extra.items()})
    try:
      self.model_dir.mkdir(parents=True, exist_ok=True)
      with open(self.model_dir / METRICS_JSONL, "a") as f:
        f.write(json.dumps(line, sort_keys=False) + "\n")
    except OSError as e:
      raise write_error(self.model_dir / METRICS_JSONL, e) from e

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()


def examples_markdown(inputs: Sequence[str], targets: Sequence[Any],
                      predictions: Sequence[Any], limit: int = 5) -> str:
  """A small markdown table of decoded examples for TensorBoard's text tab."""
  rows = ["| input | target | prediction |", "|---|---|---|"]
  clean = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:300]
  for i, t, p in list(zip(inputs, targets, predictions))[:limit]:
    rows.append(f"| {clean(i)} | {clean(t)} | {clean(p)} |")
  return "\n".join(rows)


class Progress:
  """The one progress line of every long loop: training steps and inference lines.

    step 120/300  loss 0.1234  3.21 steps/s  ETA 0:00:56
    lines 40/100  25.0 lines/s  ETA 0:00:02

  The rate is measured since the previous line (`exclude` leaves checkpoints and
  evaluations out of it). With `bar` a tqdm bar replaces the lines (inference on a
  terminal; None: when `stream` is a terminal).

  Args:
    total: the count at the end (None: unknown, no ETA).
    every: `due(count)` every this many steps; `tick()` logs every this many ticks.
    start: the count already done (a resumed run's step).
    unit: what is counted ("step", "lines").
    enabled: False logs nothing (processes other than 0).
  """

  def __init__(self, total: Optional[int], every: int = 100, start: int = 0, *,
               unit: str = "step", enabled: bool = True, bar: Optional[bool] = False,
               stream: Optional[IO[str]] = None):
    self.total, self.every, self.unit = total, max(1, int(every)), unit
    self.enabled = enabled
    self.count = self._last_count = start
    self._last_time = time.time()
    self._ticks = 0
    self.steps_per_sec: Optional[float] = None
    stream = stream if stream is not None else sys.stderr
    if bar is None:
      bar = getattr(stream, "isatty", lambda: False)()
    self._bar = None
    if bar and enabled:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top  (terminals only)
      self._bar = tqdm(total=total, initial=start, unit=unit, file=stream,
                       dynamic_ncols=True)

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (a checkpoint, an evaluation) out of the next rate."""
    self._last_time += seconds

  def due(self, count: int) -> bool:
    return count % self.every == 0 or count == self.total

  def advance(self, n: int = 1) -> None:
    """Counts `n` more (moves the bar; the line waits for `update` or `tick`)."""
    self.count += n
    if self._bar is not None and n:
      self._bar.update(n)

  def tick(self) -> None:
    """One more unit of work (an inference batch): the line every `every` ticks."""
    self._ticks += 1
    if self._bar is None and self._ticks % self.every == 0:
      self.update(self.count)

  def update(self, count: int, **values: float) -> str:
    """Moves to `count`, logs the line with `values` and returns it."""
    if count != self.count:
      self.advance(count - self.count)
    now = time.time()
    self.steps_per_sec = (count - self._last_count) / max(now - self._last_time, 1e-9)
    self._last_count, self._last_time = count, now
    eta = "?"
    if self.total is not None and self.steps_per_sec > 0:
      eta = format_duration(max(self.total - count, 0) / self.steps_per_sec)
    of = f"/{self.total}" if self.total is not None else ""
    shown = "".join(f"  {k} {v:.4f}" for k, v in values.items())
    rate = self.unit if self.unit.endswith("s") else self.unit + "s"
    line = (f"{self.unit} {count}{of}{shown}  {self.steps_per_sec:.2f} {rate}/s  "
            f"ETA {eta}")
    if self.enabled and self._bar is None:
      logging.info("%s", line)
    return line

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def format_duration(seconds: float) -> str:
  """`H:MM:SS` (`?` when unknown): every progress and summary line uses it."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"
