"""Rank classification as the evaluation metric and as BEST_METRIC."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

import trainer_testlib as tl
from prompt_tuning import train as train_lib
from prompt_tuning.errors import UserError
from prompt_tuning.inference import ranking
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.training import evaluation, rank_eval


def test_metrics_postprocess_the_ranked_label_and_prefix_task_metrics():
  seen = []

  def postprocess(text, example, is_target):
    assert not is_target
    seen.append(example["id"])
    return {"yes": 1, "no": 0}[text]

  def task_metric(targets, predictions):
    return {"f1": float(sum(p == t == 1 for p, t in zip(predictions, targets)))}

  out = rank_eval.metrics([0, 1, 1, 0], ["yes", "no"], [{"id": i} for i in range(4)],
                          [1, 0, 1, 1], postprocess, [task_metric], lambda v: v)
  assert out == {"rank_accuracy": 0.75, "rank/f1": 2.0}
  assert seen == [0, 1, 2, 3]


def test_settings_refuse_a_single_label_and_unknown_normalization():
  with pytest.raises(ValueError, match="at least two label"):
    rank_eval.RankSettings({"t": ["yes"]})
  with pytest.raises(ValueError, match="Unknown rank_normalization 'avg'"):
    rank_eval.RankSettings({"t": ["yes", "no"]}, "avg")


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_evaluator_ranks_each_label_like_scoring_it_alone(normalization):
  import seqio  # pylint: disable=g-import-not-at-top
  tl.register_task()
  config = tl.tiny_config(dropout_rate=0.0)
  model = Transformer(config)
  dummy = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(3), dummy, dummy)["params"])
  labels = ["yes", "no way"]  # multi-token labels of different lengths
  evaluator = evaluation.Evaluator(
      model, None, None, tl.TASK, tl.FEATURE_LENGTHS, batch_size=4, decode=False,
      rank=rank_eval.RankSettings({tl.TASK: labels}, normalization))
  result = evaluator.evaluate(params)[tl.TASK]
  # By hand: each (example, label) scored on its own, then normalized.
  vocab = seqio.ByteVocabulary()
  examples = evaluator.examples[tl.TASK]
  hits = []
  for feature, target in zip(examples.features, examples.targets):
    tokens = jnp.asarray(feature["encoder_input_tokens"])[None]
    scores = []
    for label in labels:
      ids = jnp.asarray([list(vocab.encode(label)) + [1]], jnp.int32)
      score = float(ranking.score_sequences(model, params, tokens, ids)[0])
      scores.append(score / ids.shape[1] if normalization == "mean" else score)
    hits.append(labels[int(np.argmax(scores))] == target)
  assert result.metrics["rank_accuracy"] == pytest.approx(np.mean(hits))
  assert result.metrics["rank/accuracy"] == pytest.approx(100.0 * np.mean(hits))
  assert "accuracy" not in result.metrics  # decode=False: no decoded metrics
  assert evaluation.select_metric({tl.TASK: result}, "rank_accuracy") == (
      "rank_accuracy", pytest.approx(np.mean(hits)))


def test_a_run_selects_its_best_checkpoint_by_rank_accuracy(tmp_path, monkeypatch):
  from tasks import labels as labels_lib  # pylint: disable=g-import-not-at-top
  tl.register_task()
  monkeypatch.setitem(labels_lib._LABELS, tl.TASK, tl.LABELS)  # pylint: disable=protected-access
  config = tl.train_config(tmp_path, train_steps=2, eval_period=1,
                           rank_classification=True, best_metric="rank_accuracy")
  result = train_lib.build_and_train(config, method=tl.partial_tuning(),
                                     model_config=tl.tiny_config(),
                                     optimizer=tl.adam(),
                                     batches_fn=tl.fixed_batches(8))
  assert result.best["metric"] == "rank_accuracy" and result.best["mode"] == "max"
  assert 0.0 <= result.best["value"] <= 1.0
  assert (tmp_path / "best").is_dir()
  lines = (tmp_path / "metrics.jsonl").read_text()
  assert '"rank_accuracy"' in lines and '"rank/accuracy"' in lines


def test_rank_classification_of_a_task_without_labels_is_refused_early(tmp_path):
  tl.register_task()
  config = tl.train_config(tmp_path, rank_classification=True)
  with pytest.raises(UserError, match="has no label strings"):
    train_lib.build_and_train(config, method=tl.partial_tuning(),
                              model_config=tl.tiny_config(), optimizer=tl.adam(),
                              batches_fn=tl.fixed_batches(8))
  assert not (tmp_path / "config.json").exists()
