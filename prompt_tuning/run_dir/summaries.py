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
import time
from typing import Any, Dict, Mapping, Optional, Sequence

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
  """A console line every `every` steps: step, loss, steps/s and ETA."""

  def __init__(self, total_steps: int, every: int = 100, start_step: int = 0,
               enabled: bool = True):
    self.total_steps = total_steps
    self.every = max(1, every)
    self.enabled = enabled
    self._last_step = start_step
    self._last_time = time.time()
    self.steps_per_sec: Optional[float] = None

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (a checkpoint, an evaluation) out of the next steps/s."""
    self._last_time += seconds

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total_steps

  def update(self, step: int, loss: float) -> str:
    """Logs the line for `step` and returns it; also sets `steps_per_sec`."""
    now = time.time()
    elapsed = max(now - self._last_time, 1e-9)
    self.steps_per_sec = (step - self._last_step) / elapsed
    self._last_step, self._last_time = step, now
    remaining = max(self.total_steps - step, 0)
    eta = remaining / self.steps_per_sec if self.steps_per_sec > 0 else float("inf")
    line = (f"step {step}/{self.total_steps}  loss {loss:.4f}  "
            f"{self.steps_per_sec:.2f} steps/s  ETA {format_duration(eta)}")
    if self.enabled:
      logging.info("%s", line)
    return line


def format_duration(seconds: float) -> str:
  """`H:MM:SS` (`?` when unknown): every progress and summary line uses it."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"
