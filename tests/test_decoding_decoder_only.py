"""Cached decoding of the decoder-only families: greedy against transformers'
`generate` on a left/right-padded batch, sampling and beam search against greedy
and against the model's own scores, a prompt bank's mixed batch against one
prompt at a time, and a prefix prefilled into the cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import decoder_testlib as lib
from prompt_tuning import checkpoints
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.models import families
from prompt_tuning.models.decoder_config import gpt2_preset, llama_preset
from prompt_tuning.models.decoder_decoding import (beam_search, greedy_decode,
                                                   left_align, sample_decode)

EOS, LENGTH = 7, 9
LLAMA = llama_preset("tiny", hidden_size=24, num_attention_heads=6,
                     num_key_value_heads=2, vocab_size=97)
GPT2 = gpt2_preset("tiny", n_embd=24, n_head=3, vocab_size=97, dropout_rate=0.0)


def _batch(seed=0, vocab=97):
  """[3, 8]: full, right-padded and left-padded rows (no EOS inside)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(EOS + 1, vocab, (3, 8))
  tokens[1, 5:] = 0
  tokens[2, :3] = 0
  return tokens


def test_left_align():
  tokens = np.array([[1, 2, 3, 0, 0], [0, 0, 4, 5, 6], [7, 8, 9, 1, 2]])
  aligned, mask = left_align(jnp.asarray(tokens), jnp.asarray(tokens > 0))
  np.testing.assert_array_equal(aligned, [[0, 0, 1, 2, 3], [0, 0, 4, 5, 6],
                                          [7, 8, 9, 1, 2]])
  np.testing.assert_array_equal(mask, aligned > 0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_matches_transformers_generate(tmp_path, family):
  torch.manual_seed(0)
  if family == "gpt2":
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=24,
                                     n_layer=2, n_head=3)
    reference = transformers.GPT2LMHeadModel(config)
  else:
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=24,
                                      intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2)
    reference = transformers.LlamaForCausalLM(config)
  with torch.no_grad():
    for name, param in reference.named_parameters():
      if "norm" not in name and "ln_" not in name:
        param.normal_(0.0, 0.3)  # peaked distributions: no near-ties in argmax
  reference.eval().save_pretrained(tmp_path)
  ours_config, params = checkpoints.load(tmp_path)
  model = families.build(ours_config)
  tokens = _batch()
  ours = np.asarray(greedy_decode(model, params, jnp.asarray(tokens),
                                  max_decode_length=LENGTH, eos_id=EOS))
  aligned, mask = (np.asarray(a) for a in left_align(jnp.asarray(tokens),
                                                     jnp.asarray(tokens > 0)))
  with torch.no_grad():
    generated = reference.generate(
        input_ids=torch.tensor(aligned), attention_mask=torch.tensor(mask),
        max_new_tokens=LENGTH, do_sample=False, eos_token_id=EOS, pad_token_id=0,
        min_new_tokens=0).numpy()[:, aligned.shape[1]:]
  expected = np.zeros_like(ours)
  expected[:, :generated.shape[1]] = generated
  assert len(set(expected.ravel())) > 3  # not a degenerate repetition
  np.testing.assert_array_equal(ours, expected)


def test_sampling_limits_are_greedy():
  model, params = lib.init(LLAMA, seed=1)
  tokens = jnp.asarray(_batch(1))
  greedy = np.asarray(greedy_decode(model, params, tokens, max_decode_length=LENGTH,
                                    eos_id=EOS))
  rng = jax.random.PRNGKey(3)
  for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"top_p": 1e-6}):
    np.testing.assert_array_equal(
        sample_decode(model, params, tokens, rng=rng, max_decode_length=LENGTH,
                      eos_id=EOS, **kwargs), greedy, err_msg=str(kwargs))
  first = sample_decode(model, params, tokens, rng=rng, max_decode_length=LENGTH,
                        eos_id=-1, temperature=2.0)
  again = sample_decode(model, params, tokens, rng=rng, max_decode_length=LENGTH,
                        eos_id=-1, temperature=2.0)
  other = sample_decode(model, params, tokens, rng=jax.random.PRNGKey(4),
                        max_decode_length=LENGTH, eos_id=-1, temperature=2.0)
  np.testing.assert_array_equal(first, again)
  assert np.any(np.asarray(first) != np.asarray(other))


def _sequence_log_prob(model, params, tokens, continuation):
  """Teacher-forced log p(continuation | tokens) per row, up to and with EOS."""
  aligned, mask = left_align(jnp.asarray(tokens), jnp.asarray(tokens > 0))
  full = np.concatenate([np.asarray(aligned), continuation], axis=1)
  full_mask = np.concatenate([np.asarray(mask), np.ones_like(continuation, bool)], 1)
  logits = lib.apply(model, {"params": params}, jnp.asarray(full),
                     jnp.asarray(full_mask))
  log_probs = np.asarray(jax.nn.log_softmax(logits))[:, tokens.shape[1] - 1:-1]
  picked = np.take_along_axis(log_probs, continuation[..., None], axis=2)[..., 0]
  ended = np.cumsum(continuation == EOS, axis=1) - (continuation == EOS)
  return np.sum(np.where(ended == 0, picked, 0.0), axis=1), np.sum(ended == 0, 1)


def test_beam_search_against_greedy_and_own_scores():
  model, params = lib.init(GPT2, seed=2)
  tokens = _batch(2)
  greedy = np.asarray(greedy_decode(model, params, jnp.asarray(tokens),
                                    max_decode_length=LENGTH, eos_id=EOS))
  one, _ = beam_search(model, params, jnp.asarray(tokens), max_decode_length=LENGTH,
                       beam_size=1, alpha=0.0, eos_id=EOS)
  np.testing.assert_array_equal(one, greedy)
  seqs, scores = beam_search(model, params, jnp.asarray(tokens),
                             max_decode_length=LENGTH, beam_size=4, alpha=0.0,
                             eos_id=EOS)
  seqs, scores = np.asarray(seqs), np.asarray(scores)
  log_prob, _ = _sequence_log_prob(model, params, tokens, seqs)
  np.testing.assert_allclose(scores, log_prob, atol=1e-4)
  greedy_log_prob, _ = _sequence_log_prob(model, params, tokens, greedy)
  assert np.all(scores >= greedy_log_prob - 1e-5)


def test_prompt_bank_mixed_batch_equals_one_prompt_at_a_time():
  _, params = lib.init(LLAMA, seed=3)
  rng = np.random.default_rng(3)
  prompts = {"a": rng.normal(size=(2, 24)).astype(np.float32),
             "b": rng.normal(size=(5, 24)).astype(np.float32)}
  bank, bank_params = bank_lib.from_prompts(prompts)
  banked = families.build(LLAMA, prompt=bank)
  with_bank = {**params, "model": {**params["model"], "prompt": bank_params}}
  tokens = jnp.asarray(_batch(3))
  names = ["b", "a", "b"]
  mixed = greedy_decode(banked, with_bank, tokens, max_decode_length=LENGTH,
                        eos_id=-1, prompt_index=bank.indices(names))
  for row, name in enumerate(names):
    single = families.build(LLAMA, prompt=prompt_lib.Prompt(length=len(prompts[name])))
    single_params = {**params, "model": {**params["model"],
                                         "prompt": {"prompt": prompts[name]}}}
    alone = greedy_decode(single, single_params, tokens[row:row + 1],
                          max_decode_length=LENGTH, eos_id=-1)
    np.testing.assert_array_equal(mixed[row:row + 1], alone, err_msg=name)


def test_prefix_is_prefilled_like_past_tokens():
  """Greedy continuation of b with a prefix equal to the keys/values of a is the
  continuation of a + b."""
  model, params = lib.init(LLAMA, seed=4)
  rng = np.random.default_rng(4)
  a = rng.integers(EOS + 1, 97, (1, 5))
  b = rng.integers(EOS + 1, 97, (1, 4))
  prefixed, prefixed_params = lib.past_as_prefix(LLAMA, params, a)
  got = greedy_decode(prefixed, prefixed_params, jnp.asarray(b),
                      max_decode_length=LENGTH, eos_id=-1)
  want = greedy_decode(model, params, jnp.asarray(np.concatenate([a, b], 1)),
                       max_decode_length=LENGTH, eos_id=-1)
  np.testing.assert_array_equal(got, want)


def test_attention_mask_lets_token_zero_be_real():
  """With an explicit mask, id 0 (GPT-2's "!", a BOS of 0) is an input token: the
  greedy continuation equals argmax decoding by repeated full forward passes."""
  model, params = lib.init(GPT2, seed=5)
  tokens = np.array([[0, 11, 12, 13, 0, 0], [0, 0, 0, 21, 22, 23]])
  mask = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], bool)  # row 1: a real 0
  got = np.asarray(greedy_decode(model, params, jnp.asarray(tokens), eos_id=-1,
                                 max_decode_length=4, attention_mask=jnp.asarray(mask)))
  assert not np.array_equal(got, np.asarray(greedy_decode(
      model, params, jnp.asarray(tokens), eos_id=-1, max_decode_length=4)))
  for row in range(2):
    sequence = list(tokens[row][mask[row]])
    for _ in range(4):
      logits = lib.apply(model, {"params": params}, jnp.asarray([sequence]),
                         jnp.ones((1, len(sequence)), bool))
      sequence.append(int(np.argmax(logits[0, -1])))
    np.testing.assert_array_equal(got[row], sequence[-4:])
