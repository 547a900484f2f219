"""Finishing interrupted runs (issue 14, item 3).

A rerun of a run stopped after its final checkpoint (killed during the final
evaluation, or between the checkpoint and its `.npy` export) completes it: final
export, final evaluation, best/, metrics; a missing step export is rewritten; a
rerun of a complete run says so and does nothing. The interrupted MODEL_DIR
states are built by deleting what the kill would not have written (a kill at
those moments is a matter of milliseconds); the real kill -9 paths are in
tests/test_faults.py.
"""
import json
import logging
import pathlib
import shutil
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import trainer_testlib as tl  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.run_dir import layout  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.run_dir import train_state as ckpt  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 4


def _train(model_dir, steps=STEPS, eval_period=0):
  tl.register_task()
  config = tl.train_config(model_dir, train_steps=steps, checkpoint_period=2,
                           keep_checkpoints=5, eval_period=eval_period,
                           max_eval_examples=4, eval_batch_size=4,
                           max_decode_length=3, log_period=1000)
  return train_lib.build_and_train(config, method=tl.partial_tuning(),
                       model_config=tl.tiny_config(), optimizer=tl.adam(),
                       batches_fn=tl.fixed_batches(8))


def _eval_steps(model_dir):
  lines = (model_dir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(l)["step"] for l in lines if json.loads(l)["task"] == tl.TASK]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A complete 4-step run (evaluated at its end only) to copy from."""
  model_dir = tmp_path_factory.mktemp("finished") / "run"
  result = _train(model_dir)
  assert result.step == STEPS and result.best["step"] == STEPS
  return model_dir


def _copy(finished, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(finished, model_dir)
  return model_dir


def test_a_complete_run_records_it_and_a_rerun_says_so(finished, tmp_path, caplog):
  model_dir = _copy(finished, tmp_path)
  assert json.loads((model_dir / layout.COMPLETE_JSON).read_text()) == {"step": STEPS}
  lines_before = (model_dir / "metrics.jsonl").read_text()
  with caplog.at_level(logging.INFO):
    result = _train(model_dir)
  assert result.step == STEPS and result.losses == {}
  assert any(f"already complete at step {STEPS}" in r.getMessage()
             for r in caplog.records)
  assert (model_dir / "metrics.jsonl").read_text() == lines_before  # nothing redone


def test_killed_during_the_final_evaluation_is_finished_by_a_rerun(finished, tmp_path):
  model_dir = _copy(finished, tmp_path)
  # What a kill -9 in the final evaluation leaves: the final checkpoint and export,
  # no final metrics, no best/, no completion record.
  (model_dir / layout.COMPLETE_JSON).unlink()
  shutil.rmtree(model_dir / layout.BEST_DIR)
  (model_dir / "metrics.jsonl").unlink()
  result = _train(model_dir)
  assert result.losses == {}  # no step trained again
  assert _eval_steps(model_dir) == [STEPS]
  best = json.loads((model_dir / layout.BEST_DIR / layout.BEST_JSON).read_text())
  assert best["step"] == STEPS and list((model_dir / layout.BEST_DIR).glob("*.npy"))
  assert layout.is_complete(str(model_dir), STEPS)


def test_killed_before_the_final_export_is_finished_by_a_rerun(finished, tmp_path):
  model_dir = _copy(finished, tmp_path)
  final_export = layout.numpy_checkpoint_dir(str(model_dir), STEPS)
  expected = {p.name: p.read_bytes() for p in final_export.glob("*.npy")}
  # Killed right after the orbax checkpoint: no export, no evaluation.
  shutil.rmtree(final_export)
  (model_dir / layout.COMPLETE_JSON).unlink()
  shutil.rmtree(model_dir / layout.BEST_DIR)
  (model_dir / "metrics.jsonl").unlink()
  _train(model_dir)
  assert {p.name: p.read_bytes() for p in final_export.glob("*.npy")} == expected
  assert _eval_steps(model_dir) == [STEPS]
  assert (model_dir / layout.BEST_DIR / layout.BEST_JSON).is_file()
  assert layout.is_complete(str(model_dir), STEPS)


def test_a_missing_step_export_is_rewritten_on_resume(tmp_path):
  model_dir = tmp_path / "run"
  _train(model_dir, steps=2, eval_period=-1)
  export = layout.numpy_checkpoint_dir(str(model_dir), 2)
  expected = {p.name: p.read_bytes() for p in export.glob("*.npy")}
  shutil.rmtree(export)  # a kill (or a full disk) between checkpoint_2 and export
  result = _train(model_dir, steps=4, eval_period=-1)  # a longer run resumes at 2
  assert sorted(result.losses) == [3, 4]
  assert {p.name: p.read_bytes() for p in export.glob("*.npy")} == expected
  assert layout.has_export(str(model_dir), 4)
