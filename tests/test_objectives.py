"""Training objectives from gin: perceptron / valid-label losses and wayward."""
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer_testlib as tl
from prompt_tuning import configurables
from prompt_tuning import train as train_lib
from prompt_tuning.errors import UserError
from prompt_tuning.inference import ranking
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.params import flatten
from prompt_tuning.training import losses, objectives

LABELS = ((5, 6, 1), (7, 1, 0))  # two labels, 3 and 2 real tokens (+ EOS)


@pytest.fixture(scope="module")
def model_and_params():
  method = prompt_tuning(length=2)
  model = method.build(tl.tiny_config(dropout_rate=0.0))
  dummy = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy)["params"])
  return model, params


def _batch():
  targets = np.array([[5, 6, 1, 0], [7, 1, 0, 0], [9, 9, 1, 0]], np.int32)
  return {"encoder_input_tokens": jnp.asarray(np.array(
              [[3, 4, 5, 1, 0], [8, 9, 1, 0, 0], [4, 4, 4, 4, 1]], np.int32)),
          "decoder_target_tokens": jnp.asarray(targets),
          "decoder_input_tokens": jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
          "decoder_loss_weights": jnp.asarray((targets > 0).astype(np.int32))}


def test_gold_labels_match_whole_targets_only():
  gold = objectives.gold_labels(_batch()["decoder_target_tokens"],
                                jnp.asarray(LABELS))
  np.testing.assert_array_equal(gold, [[True, False], [False, True], [False, False]])
  long_label = jnp.asarray([[5, 6, 1, 2, 3]])  # longer than the targets
  assert not objectives.gold_labels(_batch()["decoder_target_tokens"],
                                    long_label).any()


@pytest.mark.parametrize("spec", [objectives.perceptron(hinge=1.0, reduction="sum"),
                                  objectives.valid_label(normalization="mean")])
def test_classification_loss_is_the_library_loss_over_ranked_scores(
    model_and_params, spec):
  model, params = model_and_params
  batch = _batch()
  loss_fn = objectives.ClassificationLoss(losses.LossFn(model, enable_dropout=False),
                                          LABELS, spec)
  loss, aux = jax.jit(loss_fn)(params, batch)
  # Scores by hand: each (example, label) alone through the ranking library.
  labels = jnp.asarray(LABELS)
  scores = np.array([[float(ranking.score_sequences(
      model, params, batch["encoder_input_tokens"][b:b + 1], labels[c:c + 1])[0])
                      for c in range(2)] for b in range(3)])
  scores = np.asarray(ranking.normalize(scores, ranking.label_lengths(labels),
                                        spec.normalization))
  gold = np.array([0, 1])  # the third example's target is no label
  if spec.objective == "perceptron":
    expected, _ = losses.perceptron_loss(scores[:2], gold, hinge=1.0, reduction="sum")
  else:
    expected, _ = losses.valid_label_cross_entropy(scores[:2], gold, reduction="mean")
  assert float(loss) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
  assert float(aux["unmatched_targets"]) == 1.0
  # Gradients reach the prompt.
  grads = jax.jit(jax.grad(lambda p: loss_fn(p, batch, None)[0]))(params)
  assert np.abs(np.asarray(grads["encoder"]["prompt"]["prompt"])).sum() > 0


def test_wayward_adds_gamma_times_the_distance_to_the_embedded_text(model_and_params):
  model, params = model_and_params
  base = losses.LossFn(model, enable_dropout=False)
  loss_fn = objectives.WaywardLoss(base, (10, 11), 0.5, "encoder/prompt/prompt",
                                   "token_embedder/embedding")
  total, aux = jax.jit(loss_fn)(params, _batch())
  plain, _ = jax.jit(base)(params, _batch())
  prompt = np.asarray(params["encoder"]["prompt"]["prompt"])
  text = np.asarray(params["token_embedder"]["embedding"])[[10, 11]]
  distance = np.sum((prompt - text) ** 2) / 2
  assert float(aux["wayward_distance"]) == pytest.approx(distance, rel=1e-5)
  assert float(total) == pytest.approx(float(plain) + 0.5 * distance, rel=1e-5)
  # Its gradient pulls the prompt toward the text: gamma * 2 (prompt - text) / P.
  grads = jax.jit(jax.grad(lambda p: loss_fn(p, _batch(), None)[0] - base(
      p, _batch(), None)[0]))(params)
  np.testing.assert_allclose(grads["encoder"]["prompt"]["prompt"],
                             0.5 * (prompt - text), rtol=1e-4, atol=1e-6)


def test_objectives_are_gin_selectable():
  gin.parse_config("""
      train.objective = @objectives.perceptron()
      objectives.perceptron.hinge = 0.5
      objectives.wayward.text = 'yes or no'
  """)
  spec = configurables.CONFIGURABLES["objectives.perceptron"]()
  assert spec == objectives.ObjectiveSpec("perceptron", hinge=0.5)
  assert configurables.CONFIGURABLES["objectives.wayward"]().text == "yes or no"
  with pytest.raises(ValueError, match="Unknown objective"):
    objectives.ObjectiveSpec("hinge")


def _train(model_dir, **objective_kwargs):
  return train_lib.build_and_train(
      tl.train_config(model_dir, train_steps=3), method=prompt_tuning(length=2),
      model_config=tl.tiny_config(), optimizer=tl.adam(0.1), **objective_kwargs)


def test_a_run_trains_with_the_chosen_objective(tmp_path, monkeypatch):
  from tasks import labels as labels_lib  # pylint: disable=g-import-not-at-top
  tl.register_task()
  monkeypatch.setitem(labels_lib._LABELS, tl.TASK, tl.LABELS)  # pylint: disable=protected-access
  plain = _train(tmp_path / "ce")
  ranked = _train(tmp_path / "perceptron",
                  objective=objectives.perceptron(hinge=1.0),
                  wayward=objectives.wayward("yes or no", gamma=0.1))
  assert ranked.step == 3 and (tmp_path / "perceptron" / "complete.json").exists()
  before = flatten(plain.trainable)["encoder/prompt/prompt"]
  after = flatten(ranked.trainable)["encoder/prompt/prompt"]
  assert np.abs(before - after).max() > 1e-4  # the objective changed the prompt
  assert {"unmatched_targets", "wayward_distance", "objective_loss"} <= _tags(
      tmp_path / "perceptron" / "train")
  assert _scalar(tmp_path / "perceptron" / "train", "unmatched_targets") == [0.0] * 3
  with pytest.raises(UserError, match="NUM_MICROBATCHES"):
    train_lib.build_and_train(
        tl.train_config(tmp_path / "micro", num_microbatches=2),
        method=prompt_tuning(length=2), model_config=tl.tiny_config(),
        optimizer=tl.adam(), objective=objectives.perceptron())


def test_an_objective_without_labels_is_refused_before_loading(tmp_path):
  tl.register_task()
  with pytest.raises(UserError, match="has no label strings"):
    _train(tmp_path, objective=objectives.valid_label())
  assert not (tmp_path / "config.json").exists()


def _events(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for path in directory.glob("events.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      yield from event.summary.value


def _tags(directory):
  return {v.tag for v in _events(directory)}


def _scalar(directory, tag):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return [float(tf.make_ndarray(v.tensor)) for v in _events(directory) if v.tag == tag]
