"""Early stopping with a patience on the chosen metric: the run ends normally."""
import json

import pytest

import trainer_testlib as tl
from prompt_tuning import train as train_lib
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import layout
from prompt_tuning.training import early_stopping, evaluation


class ScriptedEvaluator:
  """Returns the next scripted accuracy at every evaluation (records the calls)."""

  def __init__(self, values):
    self.values, self.calls = list(values), 0

  def evaluate(self, params):
    del params
    value = self.values[min(self.calls, len(self.values) - 1)]
    self.calls += 1
    return {"task": evaluation.TaskResult({"accuracy": value}, [], [], [])}


def _run(model_dir, evaluator, **overrides):
  """`trainer.train` through the entry point, with a scripted evaluator."""
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  original = trainer.train

  def with_evaluator(config, method, optimizer, built, batches_fn, _, lr=None):
    return original(config, method, optimizer, built, batches_fn, evaluator, lr)

  trainer.train = with_evaluator
  try:
    return train_lib.build_and_train(
        tl.train_config(model_dir, **overrides), method=tl.partial_tuning(),
        model_config=tl.tiny_config(), optimizer=tl.adam(),
        batches_fn=tl.fixed_batches(8))
  finally:
    trainer.train = original


def test_a_run_stops_after_patience_evaluations_without_improvement(tmp_path):
  # Best at the 2nd evaluation (step 2); steps 3 and 4 do not improve: stop at 4.
  evaluator = ScriptedEvaluator([0.5, 0.7, 0.6, 0.7, 0.9, 0.9])
  result = _run(tmp_path, evaluator, train_steps=10, eval_period=1,
                early_stopping_patience=2)
  assert result.stopped_early and result.step == 4 and evaluator.calls == 4
  assert sorted(result.losses) == [1, 2, 3, 4]
  assert result.best["step"] == 2 and result.best["value"] == 0.7
  assert layout.read_best_record(tmp_path)["step"] == 2
  assert layout.numpy_steps(tmp_path) == [4]  # the stopping step was exported
  assert json.loads((tmp_path / "complete.json").read_text()) == {
      "step": 4, "early_stopped": True}
  # A rerun finds the run complete: nothing trained, nothing evaluated.
  again = _run(tmp_path, ScriptedEvaluator([1.0]), train_steps=10, eval_period=1,
               early_stopping_patience=2)
  assert again.step == 4 and again.losses == {} and again.stopped_early


def test_without_patience_the_same_script_trains_to_the_end(tmp_path):
  evaluator = ScriptedEvaluator([0.5, 0.7, 0.6, 0.6, 0.6, 0.6])
  result = _run(tmp_path, evaluator, train_steps=6, eval_period=1)
  assert result.step == 6 and not result.stopped_early and evaluator.calls == 6
  assert json.loads((tmp_path / "complete.json").read_text()) == {"step": 6}


def test_a_patience_that_cannot_act_is_refused_before_training(tmp_path):
  with pytest.raises(UserError, match="needs periodic evaluations"):
    _run(tmp_path / "a", ScriptedEvaluator([1.0]), eval_period=0,
         early_stopping_patience=2)
  with pytest.raises(UserError, match="integer >= 1"):
    _run(tmp_path / "b", ScriptedEvaluator([1.0]), eval_period=1,
         early_stopping_patience=0)


def test_count_follows_the_best_step_so_resumed_runs_count_alike():
  best = {"step": 20, "metric": "accuracy", "value": 0.5}
  assert early_stopping.evaluations_without_improvement(50, best, 10) == 3
  assert not early_stopping.due(40, best, 3, 10)
  assert early_stopping.due(50, best, 3, 10)
  assert not early_stopping.due(50, None, 3, 10)
