"""Perceptron / valid-label cross-entropy over label scores, and wayward
regularization, against brute-force numpy and their gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.training import losses


def brute_perceptron(scores, gold, hinge, valid):
  out = []
  for row, g, v in zip(scores, gold, valid):
    allowed = [s for s, ok in zip(row, v) if ok]
    out.append(max(0.0, hinge + max(allowed) - row[g]))
  return np.asarray(out)


@pytest.mark.parametrize("hinge", [0.0, 0.5])
def test_perceptron_matches_brute_force_with_padding_labels(hinge):
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(5, 4)).astype(np.float32)
  gold = np.asarray([0, 3, 1, 2, 0])
  valid = np.ones((5, 4), bool)
  valid[1, 2] = valid[4, 3] = False
  scores[4, 3] = 50.0  # a padded label scoring highest must not count
  total, per_example = losses.perceptron_loss(scores, gold, hinge=hinge,
                                              valid=valid)
  expected = brute_perceptron(scores, gold, hinge, valid)
  np.testing.assert_allclose(per_example, expected, rtol=1e-6)
  np.testing.assert_allclose(total, expected.sum(), rtol=1e-6)
  one_hot = jax.nn.one_hot(gold, 4)
  np.testing.assert_allclose(
      losses.perceptron_loss(scores, one_hot, hinge=hinge, valid=valid,
                             reduction="mean")[0], expected.mean(), rtol=1e-6)


def test_perceptron_gradient_pushes_gold_up_and_the_winner_down():
  scores = jnp.asarray([[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]])
  gold = jnp.asarray([2, 0])
  grad = jax.grad(lambda s: losses.perceptron_loss(s, gold)[0])(scores)
  # Example 0: the winner (1) goes down, the gold (2) up; example 1 is right: 0.
  np.testing.assert_array_equal(grad, [[0.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
  with_hinge = jax.grad(lambda s: losses.perceptron_loss(s, gold, hinge=1.0)[0])(
      scores)
  assert float(losses.perceptron_loss(scores, gold, hinge=1.0)[1][1]) == 1.0
  np.testing.assert_array_equal(with_hinge[0], [0.0, 1.0, -1.0])


def test_valid_label_cross_entropy_matches_numpy():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(3, 5)).astype(np.float32)
  gold = np.asarray([4, 0, 2])
  valid = np.ones((3, 5), bool)
  valid[0, :2] = False
  loss, per_example = losses.valid_label_cross_entropy(scores, gold, valid=valid)
  expected = []
  for row, g, v in zip(scores.astype(np.float64), gold, valid):
    logz = np.log(np.exp(row[v]).sum())
    expected.append(logz - row[g])
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  with pytest.raises(ValueError, match="one-hot"):
    losses.valid_label_cross_entropy(scores, np.zeros((3, 4)))
  with pytest.raises(ValueError, match="reduction 'max'"):
    losses.perceptron_loss(scores, gold, reduction="max")


def test_wayward_distance_and_its_gradient():
  rng = np.random.default_rng(2)
  prompt = rng.normal(size=(4, 3)).astype(np.float32)
  text = rng.normal(size=(4, 3)).astype(np.float32)
  expected = sum(np.sum((prompt[p] - text[p]) ** 2) for p in range(4)) / 4
  np.testing.assert_allclose(losses.wayward_distance(prompt, text), expected,
                             rtol=1e-6)
  total, distance = losses.wayward_loss(jnp.float32(2.0), prompt, text, gamma=0.1)
  np.testing.assert_allclose(total, 2.0 + 0.1 * expected, rtol=1e-6)
  np.testing.assert_allclose(distance, expected, rtol=1e-6)
  grad = jax.grad(lambda p: losses.wayward_loss(0.0, p, text, gamma=0.1)[0])(prompt)
  np.testing.assert_allclose(grad, 0.1 * 2 * (prompt - text) / 4, rtol=1e-5)
  assert float(losses.wayward_distance(text, text)) == 0.0
  with pytest.raises(ValueError, match=r"\[4, 3\] and \[5, 3\]"):
    losses.wayward_distance(prompt, np.zeros((5, 3)))
