"""The MODEL_DIR layout and its readers, atomic `.npy` writes, one duration format."""
import io
import json
import logging
import types

import numpy as np
import pytest

from prompt_tuning.run_dir import layout, summaries, train_state


def _run(tmp_path, method="prompt", steps=(2, 4), best=None):
  root = tmp_path / "run"
  root.mkdir()
  (root / layout.CONFIG_JSON).write_text(json.dumps({"method": method}))
  for step in steps:
    train_state.export_step(str(root), step, {"encoder.prompt.prompt": np.full((2, 3), step)})
  if best is not None:
    train_state.export_best(str(root), {"encoder.prompt.prompt": np.full((2, 3), -1.0)},
                            {"step": best, "metric": "accuracy", "value": 1.0})
  return root


def test_is_model_dir_needs_a_run_record_or_exports(tmp_path):
  assert layout.is_model_dir(_run(tmp_path))
  native = tmp_path / "native"
  native.mkdir()
  (native / layout.CONFIG_JSON).write_text(json.dumps({"vocab_size": 32}))  # a T5Config
  assert not layout.is_model_dir(native)
  (native / layout.CONFIG_JSON).write_text("{not json")
  assert not layout.is_model_dir(native)
  exports_only = tmp_path / "exports_only"
  (exports_only / layout.NUMPY_DIR).mkdir(parents=True)
  assert layout.is_model_dir(exports_only)
  assert not layout.is_model_dir(tmp_path / "missing")


def test_export_dir_takes_best_latest_or_a_step(tmp_path, caplog):
  root = _run(tmp_path)
  with caplog.at_level(logging.WARNING):
    assert layout.export_dir(root).name == "checkpoint_4"  # no best/ yet: latest
  assert "no best/ export" in caplog.text
  assert layout.export_dir(root, 2).name == "checkpoint_2"
  with pytest.raises(FileNotFoundError, match=r"available steps: \[2, 4\]"):
    layout.export_dir(root, 3)
  (tmp_path / "b").mkdir()
  root_best = _run(tmp_path / "b", best=4)
  assert layout.export_dir(root_best).name == layout.BEST_DIR
  assert layout.read_best_record(root_best)["step"] == 4
  np.testing.assert_array_equal(
      layout.exported_arrays(root_best)["encoder.prompt.prompt"], np.full((2, 3), -1.0))
  assert layout.numpy_steps(root) == [2, 4]


def test_record_and_metrics_readers(tmp_path):
  root = _run(tmp_path, method="lopa")
  assert layout.read_record(root) == {"method": "lopa"}
  with pytest.raises(FileNotFoundError, match="not a training MODEL_DIR"):
    layout.read_record(tmp_path)
  assert layout.metrics_lines(root) == []
  lines = [{"step": 2, "task": "a", "accuracy": 50.0}, {"step": 2, "task": "best"},
           {"step": 4, "task": "b", "accuracy": 75.0}]
  (root / layout.METRICS_JSONL).write_text("\n".join(map(json.dumps, lines)) + "\n")
  assert [r["task"] for r in layout.evaluations(root)] == ["a", "b"]
  assert layout.evaluations(root, "b") == [lines[2]]
  assert layout.state_steps(root) == [] and layout.latest_step(root) is None
  assert not layout.is_finished(root, 4)
  with pytest.raises(FileNotFoundError, match="no orbax checkpoint"):
    layout.resolve_step(root)


def test_write_npy_is_atomic_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "deep" / "p.npy"
  train_state.write_npy(path, np.ones((2, 3)))
  np.testing.assert_array_equal(np.load(path), np.ones((2, 3)))

  def full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(train_state.np, "save", full)
  with pytest.raises(OSError, match="No space"):
    train_state.write_npy(path, np.zeros((2, 3)))
  np.testing.assert_array_equal(np.load(path), np.ones((2, 3)))  # the old file stays
  assert sorted(p.name for p in path.parent.iterdir()) == ["p.npy"]  # no temp file


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (59.6, "0:01:00"),
                                           (3725, "1:02:05"), (float("inf"), "?")])
def test_one_duration_format(seconds, text):
  assert summaries.format_duration(seconds) == text


def test_one_progress_line_for_training_steps(caplog, monkeypatch):
  clock = iter([100.0, 110.0, 148.0, 0.0, 0.0])  # start, line, line (30 s excluded)
  monkeypatch.setattr(summaries, "time", types.SimpleNamespace(time=lambda: next(clock)))
  caplog.set_level("INFO")
  progress = summaries.Progress(300, every=100, start=100)
  assert progress.due(200) and progress.due(300) and not progress.due(250)
  line = progress.update(200, loss=0.123456)
  assert line == "step 200/300  loss 0.1235  10.00 steps/s  ETA 0:00:10"
  progress.exclude(30.0)  # an evaluation: left out of the next rate
  assert progress.update(300, loss=0.1).endswith("12.50 steps/s  ETA 0:00:00")
  assert [r.getMessage() for r in caplog.records][0] == line
  quiet = summaries.Progress(10, enabled=False)
  caplog.clear()
  quiet.update(5, loss=1.0)
  assert not caplog.records


def test_one_progress_line_for_inference_batches(caplog):
  caplog.set_level("INFO")
  progress = summaries.Progress(10, every=2, unit="lines", bar=False)
  for _ in range(5):
    progress.advance(2)
    progress.tick()
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 2 and lines[0].startswith("lines 4/10  ")
  assert "lines/s  ETA" in lines[0] and lines[1].startswith("lines 8/10  ")
  unknown = summaries.Progress(None, unit="lines")
  assert "ETA ?" in unknown.update(3) and "/" not in unknown.update(4).split()[1]


def test_progress_bar_on_a_terminal_replaces_the_lines(caplog):
  caplog.set_level("INFO")
  stream = io.StringIO()
  progress = summaries.Progress(6, unit="lines", stream=stream, bar=True)
  for _ in range(3):
    progress.advance(2)
    progress.tick()
  progress.close()
  assert "6/6" in stream.getvalue() and "100%" in stream.getvalue()
  assert not [r for r in caplog.records if "lines/s" in r.getMessage()]
  not_a_terminal = summaries.Progress(6, unit="lines", stream=io.StringIO(), bar=None)
  assert not_a_terminal._bar is None  # pylint: disable=protected-access
