"""End to end through `seqio.Evaluator`: postprocessors + metrics never crash.

Garbage predictions are counted as invalid (and wrong); predicting the
targets scores perfectly. Runs on `tfds.testing.mock_data`.
"""
import os

import pytest
import seqio
import tensorflow_datasets as tfds

import tasks
from tasks import vocab

LENGTHS = {"inputs": 512, "targets": 128}
# One task per postprocessor/metric family:
# task -> (eval split, metric that an oracle maxes out, value)
CASES = {
    "glue_mrpc_as_qqp_v200": ("validation", "f1", 100.0),
    "super_glue_cb_v102": ("validation", "mean_3class_f1", None),
    "super_glue_multirc_v102": ("validation", "exact_match", 100.0),
    "super_glue_record_v102": ("validation", "em", 100.0),
    "super_glue_axg_v102": ("test", "accuracy", 100.0),
    "super_glue_wsc_v102_simple_eval": ("validation", "accuracy", None),
    "squad_v010_allanswers": ("validation", "f1", 100.0),
    "e2e_nlg": ("validation", "bleu", None),
    "xsum": ("validation", "rougeLsum", 100.0),
}


@pytest.fixture(scope="module", autouse=True)
def mock_env(t5_vocab_path):
  saved = os.environ.get(vocab.ENV_VAR)
  os.environ[vocab.ENV_VAR] = t5_vocab_path
  tasks.register_all()
  with tfds.testing.mock_data(
      num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
  if saved is None:
    del os.environ[vocab.ENV_VAR]
  else:
    os.environ[vocab.ENV_VAR] = saved


def _evaluate(evaluator, predict):
  def predict_fn(ds):
    return [(i, predict(ex)) for i, ex in tfds.as_numpy(ds)]

  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  metrics = metrics.result() if hasattr(metrics, "result") else metrics
  (task_metrics,) = metrics.values()
  return {k: getattr(v, "value", v) for k, v in task_metrics.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_garbage_and_oracle_predictions(name):
  split, oracle_metric, oracle_value = CASES[name]
  evaluator = seqio.Evaluator(
      name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=split, sequence_length=LENGTHS,
      async_compute_metrics=False)
  garbage_ids = vocab.VOCABULARY.encode("banana split") + [1]
  garbage = _evaluate(evaluator, lambda ex: garbage_ids)
  task = seqio.get_mixture_or_task(name)
  expected_keys = [k for fn in task.metric_fns for k in fn.metric_names]
  assert sorted(garbage) == sorted(expected_keys)
  if tasks.get_label_strings(name):
    num_examples = sum(1 for _ in evaluator.cached_task_datasets[name])
    assert garbage["invalid_predictions"] == num_examples > 0
    assert garbage.get("accuracy", 0.0) == 0.0
  oracle = _evaluate(evaluator, lambda ex: ex["decoder_target_tokens"])
  if tasks.get_label_strings(name):
    assert oracle["invalid_predictions"] == 0
  if oracle_value is not None:
    assert oracle[oracle_metric] == pytest.approx(oracle_value), oracle
