"""Prompt ensembling: the vote rule, replication, and one-batch integration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from methods_testlib import random_params

from prompt_tuning.models import decoding
from prompt_tuning.inference import ensemble, ranking
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

VOCAB = 64
CONFIG = preset("tiny", vocab_size=VOCAB, dropout_rate=0.0)


def test_majority_vote_and_tie_rule():
  votes = [["pos", "neg", "pos"],          # clear majority
           ["neg", "pos"],                 # 1-1 tie: the first prompt's label
           ["a", "b", "b", "a", "c"],      # 2-2 tie: 'a' is voted first
           ["c", "b", "a", "b", "a"],      # 2-2 tie between b and a: b first
           ["x", "y", "z"]]                # all distinct: the first prompt
  assert ensemble.majority_vote(votes) == ["pos", "neg", "a", "b", "x"]
  with pytest.raises(ValueError, match="at least one vote"):
    ensemble.majority_vote([[]])


def test_replicate_is_example_major():
  tokens = jnp.asarray([[5, 6], [7, 0]], jnp.int32)
  rep, index = ensemble.replicate(tokens, [2, 0, 1])
  np.testing.assert_array_equal(rep, [[5, 6]] * 3 + [[7, 0]] * 3)
  np.testing.assert_array_equal(index, [2, 0, 1, 2, 0, 1])


@pytest.fixture(scope="module")
def ensemble_model():
  """A bank of [p0, p0 (copy), p1]: prompts 0 and 1 always agree."""
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 6), 2, VOCAB)
  frozen = Transformer(CONFIG)
  params = random_params(frozen, tokens, tokens[:, :2])
  rng = np.random.default_rng(3)
  p0 = rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32)
  p1 = 3.0 * rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32)
  bank, bank_params = bank_lib.from_prompts({"p0": p0, "p0_copy": p0, "p1": p1})
  return (Transformer(CONFIG, prompt=bank), bank_lib.with_bank(params, bank_params),
          tokens)


def decode_alone(model, params, tokens, row):
  index = np.full(tokens.shape[0], row, np.int32)
  return np.asarray(decoding.greedy_decode(model, params, tokens, max_decode_length=4,
                                           eos_id=-1, prompt_index=index))


def test_ensemble_decode_votes_over_prompts(ensemble_model):
  model, params, tokens = ensemble_model
  detok = lambda ids: " ".join(str(i) for i in ids)
  # Without EOS (eos_id=-1) a label is the decoded ids minus trailing padding.
  label = lambda ids: detok(np.trim_zeros(np.asarray(ids), "b").tolist())
  winners, votes = ensemble.ensemble_decode(model, params, tokens, [2, 0, 1],
                                            max_decode_length=4, eos_id=-1,
                                            detokenize=detok)
  alone = {row: decode_alone(model, params, tokens, row) for row in (0, 2)}
  for b in range(4):
    # Each vote is that prompt's decode of the example alone, in ensemble order.
    assert votes[b] == [label(alone[2][b]), label(alone[0][b]), label(alone[0][b])]
  # Two copies of p0 outvote p1, although p1 comes first in the order.
  assert winners == [label(alone[0][b]) for b in range(4)]
  assert any(votes[b][0] != votes[b][1] for b in range(4)), "p1 never disagreed"
  # A 1-1 tie goes to the first prompt of the ensemble.
  tie_winners, _ = ensemble.ensemble_decode(model, params, tokens, [2, 0],
                                            max_decode_length=4, eos_id=-1)
  assert tie_winners == [tuple(np.trim_zeros(alone[2][b], "b").tolist())
                         for b in range(4)]


def test_ensemble_rank_classify_averages_log_likelihoods(ensemble_model):
  model, params, tokens = ensemble_model
  labels = jnp.asarray([[7, 1, 0], [9, 4, 1], [12, 1, 0]], jnp.int32)
  best, mean, per_prompt = ensemble.ensemble_rank_classify(model, params, tokens,
                                                           labels, [0, 1, 2])
  assert per_prompt.shape == (4, 3, 3) and mean.shape == (4, 3)
  alone = [np.asarray(ranking.rank_classify(
      model, params, tokens, labels, prompt_index=np.full(4, row, np.int32))[1])
           for row in (0, 2)]
  np.testing.assert_allclose(per_prompt[:, 0], alone[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per_prompt[:, 2], alone[1], rtol=1e-5, atol=1e-5)
  expected = (2 * alone[0] + alone[1]) / 3
  np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(best, expected.argmax(1))
