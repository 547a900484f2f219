"""Cached decoders against brute-force references on a tiny random T5.

Compiles dominate the cost here, so the tests share a few shapes: L=6 (and 2),
beam sizes 1 and 3; `eos_id`, `alpha` and `temperature` are traced.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from methods_testlib import random_params

from prompt_tuning.models import decoding
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

VOCAB = 64
NO_EOS = -1  # an id the model can never emit


@pytest.fixture(scope="module")
def tiny():
  model = Transformer(preset("tiny", vocab_size=VOCAB, dropout_rate=0.0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 2, VOCAB)
  tokens = tokens.at[1, 5:].set(0)  # one padded input
  forward = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
  return model, init_params(model, tokens, 0), tokens, forward


def init_params(model, tokens, seed):
  return random_params(model, tokens, tokens[:, :2], seed)  # no init compile


def uncached_greedy(forward, params, tokens, length, eos_id):
  """Step-by-step argmax of the full teacher-forced forward pass (no cache).

  The decoder input has the fixed length L (one compile); the causal mask makes
  the logits at `step` independent of the not-yet-written positions.
  """
  batch = tokens.shape[0]
  inputs = np.zeros((batch, length), np.int32)  # BOS, then the outputs so far
  out = np.zeros((batch, length), np.int32)
  done = np.zeros(batch, bool)
  for step in range(length):
    token = np.asarray(jnp.argmax(forward(params, tokens, inputs)[:, step], -1))
    token = np.where(done, 0, token)
    out[:, step] = token
    if step + 1 < length:
      inputs[:, step + 1] = token
    done |= token == eos_id
  return out


def test_cached_greedy_equals_uncached_argmax(tiny):
  model, params, tokens, forward = tiny
  got = decoding.greedy_decode(model, params, tokens, max_decode_length=6,
                               eos_id=NO_EOS)
  assert got.shape == (3, 6) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, uncached_greedy(forward, params, tokens, 6, NO_EOS))


def test_eos_stops_and_zero_fills(tiny):
  model, params, tokens, forward = tiny
  free = np.asarray(decoding.greedy_decode(model, params, tokens, max_decode_length=6,
                                           eos_id=NO_EOS))
  eos = int(free[0, 2])  # make the 3rd token of example 0 the end token
  got = np.asarray(decoding.greedy_decode(model, params, tokens, max_decode_length=6,
                                          eos_id=eos))
  np.testing.assert_array_equal(got, uncached_greedy(forward, params, tokens, 6, eos))
  for row in range(3):
    hits = np.flatnonzero(free[row] == eos)
    end = hits[0] + 1 if hits.size else 6
    np.testing.assert_array_equal(got[row, :end], free[row, :end])
    assert (got[row, end:] == 0).all()
  assert got[0, 2] == eos and (got[0, 3:] == 0).all()


def test_max_decode_length_respected(tiny):
  model, params, tokens, forward = tiny
  long = decoding.greedy_decode(model, params, tokens, max_decode_length=6,
                                eos_id=NO_EOS)
  short = decoding.greedy_decode(model, params, tokens, max_decode_length=2,
                                 eos_id=NO_EOS)
  assert short.shape == (3, 2) and long.shape == (3, 6)
  # The cache length changes the decoder's position-bias table size, not results.
  np.testing.assert_array_equal(short, long[:, :2])


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_size_one_is_greedy(tiny, alpha):
  model, params, tokens, forward = tiny
  free = np.asarray(decoding.greedy_decode(model, params, tokens, max_decode_length=6,
                                           eos_id=NO_EOS))
  # alpha=0 with an EOS that fires mid-sequence; alpha=0.6 without EOS.
  eos = int(free[0, 2]) if alpha == 0.0 else NO_EOS
  greedy = decoding.greedy_decode(model, params, tokens, max_decode_length=6,
                                  eos_id=eos)
  beam, score = decoding.beam_search(model, params, tokens, max_decode_length=6,
                                     beam_size=1, alpha=alpha, eos_id=eos)
  np.testing.assert_array_equal(beam, greedy)
  assert score.shape == (3,) and np.all(np.isfinite(score))


def all_sequence_log_probs(model, params, tokens, seqs):
  """Log-likelihood of each sequence [N, L] given one input [1, T] (one call)."""
  seqs = np.asarray(seqs, np.int32)
  inputs = np.pad(seqs, ((0, 0), (1, 0)))[:, :-1]
  logits = model.apply({"params": params},
                       jnp.repeat(tokens, len(seqs), axis=0), inputs)
  log_probs = jax.nn.log_softmax(logits)
  return np.asarray(jnp.take_along_axis(log_probs, seqs[..., None], -1)[..., 0])


def test_wide_beam_finds_exhaustive_optimum():
  """With K = V**(L-1) beams, every hypothesis is explored: the result is the
  best length-penalized sequence over all of them."""
  vocab, length, alpha, eos = 4, 3, 0.6, 1
  model = Transformer(preset("tiny", vocab_size=vocab, dropout_rate=0.0))
  tokens = jnp.asarray([[2, 3, 3, 2]], jnp.int32)
  params = init_params(model, tokens, 4)
  # Sharpen the output layer so that scores are well separated.
  params["decoder"]["logits_dense"]["kernel"] *= 8.0
  # Per-position log-probs of every length-L sequence give every prefix's too.
  full = list(itertools.product(range(vocab), repeat=length))
  token_lp = all_sequence_log_probs(model, params, tokens, full)  # [V**L, L]
  best, best_score = None, -np.inf
  for seq, lp in zip(full, token_lp):
    n = seq.index(eos) + 1 if eos in seq else length  # hypothesis = up to EOS
    score = lp[:n].sum() / ((5 + n) / 6) ** alpha
    if score > best_score:
      best, best_score = seq[:n], score
  got, got_score = decoding.beam_search(model, params, tokens,
                                        max_decode_length=length,
                                        beam_size=vocab ** (length - 1),
                                        alpha=alpha, eos_id=eos)
  expected = np.zeros(length, np.int32)
  expected[:len(best)] = best
  np.testing.assert_array_equal(got[0], expected)
  np.testing.assert_allclose(got_score[0], best_score, rtol=1e-5)


def test_beam_returns_all_beams_sorted(tiny):
  model, params, tokens, forward = tiny
  seqs, scores = decoding.beam_search(model, params, tokens, max_decode_length=6,
                                      beam_size=3, return_all_beams=True)
  assert seqs.shape == (3, 3, 6) and scores.shape == (3, 3)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
  # Each score is the hypothesis' log-likelihood over its length penalty.
  for beam in range(3):
    seq = np.asarray(seqs[:, beam])  # [B, L]
    inputs = np.pad(seq, ((0, 0), (1, 0)))[:, :-1]
    log_probs = jax.nn.log_softmax(forward(params, tokens, inputs))
    token_lp = np.take_along_axis(np.asarray(log_probs), seq[..., None], -1)[..., 0]
    for row in range(3):
      ends = np.flatnonzero(seq[row] == 1)
      n = int(ends[0]) + 1 if ends.size else 6
      np.testing.assert_allclose(scores[row, beam],
                                 token_lp[row, :n].sum() / ((5 + n) / 6) ** 0.6,
                                 rtol=1e-4)
  # predict reduces the (tokens, scores) result to the best tokens.
  best = decoding.predict(model, params, {"encoder_input_tokens": tokens},
                          functools.partial(decoding.beam_search, beam_size=3),
                          max_decode_length=6)
  np.testing.assert_array_equal(best, seqs[:, 0])


def test_cold_sampling_is_greedy(tiny):
  model, params, tokens, forward = tiny
  greedy = decoding.greedy_decode(model, params, tokens, max_decode_length=6)
  for kwargs in ({"temperature": 1e-6}, {"temperature": 0.0},
                 {"temperature": 1.0, "top_k": 1}):
    got = decoding.sample_decode(model, params, tokens, rng=jax.random.PRNGKey(7),
                                 max_decode_length=6, **kwargs)
    np.testing.assert_array_equal(got, greedy, err_msg=str(kwargs))


def test_warm_sampling_depends_on_rng(tiny):
  model, params, tokens, forward = tiny
  draws = [np.asarray(decoding.sample_decode(model, params, tokens,
                                             rng=jax.random.PRNGKey(seed),
                                             max_decode_length=6, eos_id=NO_EOS))
           for seed in (0, 0, 1)]
  np.testing.assert_array_equal(draws[0], draws[1])
  assert not np.array_equal(draws[0], draws[2])


def test_filter_logits_top_k_and_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.3, 0.15]], jnp.float32))
  kept = lambda out: (np.asarray(out[0]) > -1e9).tolist()
  assert kept(decoding.filter_logits(logits, top_k=2)) == [True, False, True, False]
  # 0.5 < 0.7 so 0.3 is needed; 0.8 >= 0.7 so 0.15 is not.
  assert kept(decoding.filter_logits(logits, top_p=0.7)) == [True, False, True, False]
  assert kept(decoding.filter_logits(logits, top_p=0.81)) == [True, False, True, True]
  assert kept(decoding.filter_logits(logits, top_p=0.1)) == [True, False, False, False]
  assert kept(decoding.filter_logits(logits)) == [True] * 4


def test_predict_uses_target_length(tiny):
  model, params, tokens, forward = tiny
  batch = {"encoder_input_tokens": tokens,
           "decoder_target_tokens": jnp.zeros((3, 2), jnp.int32)}
  out = decoding.predict(model, params, batch)
  assert out.shape == (3, 2)
  np.testing.assert_array_equal(
      out, decoding.greedy_decode(model, params, tokens, max_decode_length=6)[:, :2])
  with pytest.raises(ValueError, match="max_decode_length"):
    decoding.predict(model, params, {"encoder_input_tokens": tokens})
