"""Rank classification against a brute-force teacher-forced computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from methods_testlib import random_params

from prompt_tuning.inference import ranking
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

VOCAB = 64


@pytest.fixture(scope="module")
def tiny():
  model = Transformer(preset("tiny", vocab_size=VOCAB, dropout_rate=0.0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 6), 2, VOCAB)
  tokens = tokens.at[2, 4:].set(0)
  params = random_params(model, tokens, tokens[:, :2])
  # Three labels of different lengths, 0-padded to L=3, each ending in EOS (1).
  labels = jnp.asarray([[7, 1, 0], [9, 4, 1], [12, 1, 0]], jnp.int32)
  forward = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
  return model, params, tokens, labels, forward


def brute_force_score(forward, params, tokens_row, label):
  """Re-encodes one input and runs the full forward pass on one label; sums the
  log-probs of its non-pad tokens (later positions cannot affect earlier ones)."""
  label = np.asarray(label).tolist()
  n = len([t for t in label if t != 0])
  logits = forward(params, tokens_row, jnp.asarray([[0] + label[:-1]], jnp.int32))
  log_probs = np.asarray(jax.nn.log_softmax(logits[0]))
  return sum(log_probs[t, tok] for t, tok in enumerate(label[:n]))


def test_rank_classify_matches_brute_force(tiny):
  model, params, tokens, labels, forward = tiny
  best, scores = ranking.rank_classify(model, params, tokens, labels)
  assert best.shape == (4,) and scores.shape == (4, 3)
  expected = np.asarray([[brute_force_score(forward, params, tokens[b:b + 1], label)
                          for label in labels] for b in range(4)])
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(best, expected.argmax(axis=1))


def test_score_sequences_ignores_padding_and_agrees(tiny):
  model, params, tokens, labels, forward = tiny
  targets = jnp.asarray(np.asarray(labels)[[0, 1, 2, 1]])  # one label per example
  scores = ranking.score_sequences(model, params, tokens, targets)
  _, all_scores = ranking.rank_classify(model, params, tokens, labels)
  np.testing.assert_allclose(scores, np.asarray(all_scores)[np.arange(4), [0, 1, 2, 1]],
                             rtol=1e-6, atol=1e-6)
  # More trailing padding changes nothing.
  wider = ranking.score_sequences(model, params, tokens, jnp.pad(targets, ((0, 0),
                                                                           (0, 2))))
  np.testing.assert_allclose(wider, scores, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(scores) < 0)


def test_uniform_model_prefers_short_labels_and_breaks_ties_low(tiny):
  """With the final norm scale at 0 every logit is 0: p = 1/V for every token, so
  a label scores -len * log V; labels 0 and 2 tie (length 2) and 0 wins."""
  model, params, tokens, labels, forward = tiny
  uniform = jax.tree.map(lambda x: x, params)
  uniform["decoder"]["decoder_norm"]["scale"] = jnp.zeros_like(
      params["decoder"]["decoder_norm"]["scale"])
  best, scores = ranking.rank_classify(model, uniform, tokens, labels)
  log_v = np.log(VOCAB)
  np.testing.assert_allclose(scores, np.tile([-2 * log_v, -3 * log_v, -2 * log_v],
                                             (4, 1)), rtol=1e-6)
  np.testing.assert_array_equal(best, [0, 0, 0, 0])
  # Swapping the two tied labels moves the winner with the lower index.
  best, _ = ranking.rank_classify(model, uniform, tokens, labels[::-1])
  np.testing.assert_array_equal(best, [0, 0, 0, 0])
  best, _ = ranking.rank_classify(model, uniform, tokens, labels[jnp.array([1, 2, 0])])
  np.testing.assert_array_equal(best, [1, 1, 1, 1])


def test_rank_classify_rejects_bad_label_shape(tiny):
  model, params, tokens, labels, forward = tiny
  with pytest.raises(ValueError, match=r"\[K, L\]"):
    ranking.rank_classify(model, params, tokens, labels[0])
