"""The decoder-only loss (`losses.CausalLossFn`) against transformers' causal-LM loss,
with a soft prompt (its P positions dropped), with LoPA (features from the input
only), and through the train step's microbatches."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

import decoder_testlib as lib
from prompt_tuning import checkpoints, data_decoder
from prompt_tuning import params as params_lib
from prompt_tuning.methods.lopa import lopa
from prompt_tuning.models import families
from prompt_tuning.models.decoder_config import gpt2_preset, llama_preset
from prompt_tuning.training import losses, model_io, trainer

EXAMPLES = [{"inputs": [5, 6, 7, 1], "targets": [9, 10, 1]},
            {"inputs": [3, 1], "targets": [0, 11, 12, 13, 1]},  # 0 is a real token
            {"inputs": [8, 8, 8, 8, 8, 1], "targets": [1]}]
LENGTHS = {"inputs": 6, "targets": 5}
LLAMA = llama_preset("tiny", hidden_size=24, num_attention_heads=6,
                     num_key_value_heads=2, vocab_size=97)
GPT2 = gpt2_preset("tiny", n_embd=24, n_head=3, vocab_size=97, dropout_rate=0.0)


def _batch(examples=EXAMPLES, bos_id=0):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})
  rows = list(data_decoder.convert(ds, LENGTHS, bos_id).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_loss_equals_transformers_loss_with_labels(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
      num_attention_heads=6, num_key_value_heads=2, initializer_range=0.3,
      rms_norm_eps=1e-5, max_position_embeddings=64)).eval()
  reference.save_pretrained(tmp_path)
  config, params = checkpoints.load(tmp_path)
  batch = _batch(bos_id=2)
  loss_fn = losses.CausalLossFn(families.build(config), z_loss=0.0)
  loss, aux = jax.jit(loss_fn)(params, batch)
  # transformers: labels aligned with the inputs (it shifts them), -100 ignored.
  # One more (masked) column lets the last target be labelled.
  tokens = np.pad(batch["decoder_input_tokens"], ((0, 0), (0, 1)))
  mask = np.pad(batch["decoder_segment_ids"] > 0, ((0, 0), (0, 1)))
  labels = np.where(batch["decoder_loss_weights"] > 0,
                    batch["decoder_target_tokens"], -100)
  labels = np.pad(labels, ((0, 0), (1, 0)), constant_values=-100)
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    labels=torch.tensor(labels, dtype=torch.long))
  np.testing.assert_allclose(float(loss), out.loss.item(), rtol=1e-5)
  assert float(aux["weight_sum"]) == 3 + 5 + 1
  # Per-example log-likelihoods sum to minus the summed loss.
  np.testing.assert_allclose(-np.sum(aux["log_likelihood"]), float(loss) * 9,
                             rtol=1e-5)


def test_soft_prompt_positions_are_dropped_before_the_loss():
  """A prompt of the embeddings of tokens `a` gives the loss of the batch with `a`
  written before every row as unweighted tokens."""
  _, params = lib.init(GPT2, seed=1)
  a = np.array([17, 4, 60])
  table = np.asarray(params["transformer"]["wte"]["embedding"])
  prompted = families.build(GPT2, prompt=lib.FixedPrompt(table[a]))
  batch = _batch()
  rows = len(batch["decoder_input_tokens"])
  prepended = {
      "decoder_input_tokens": np.concatenate(
          [np.tile(a, (rows, 1)), batch["decoder_input_tokens"]], 1),
      "decoder_target_tokens": np.concatenate(
          [np.zeros((rows, 3), np.int32), batch["decoder_target_tokens"]], 1),
      "decoder_loss_weights": np.concatenate(
          [np.zeros((rows, 3), np.int32), batch["decoder_loss_weights"]], 1),
      "decoder_segment_ids": np.concatenate(
          [np.ones((rows, 3), np.int32), batch["decoder_segment_ids"]], 1),
  }
  jitted = lambda fn: jax.jit(lambda p, b: fn(p, b))  # FixedPrompt is unhashable
  got, got_aux = jitted(losses.CausalLossFn(prompted, z_loss=1e-4))(params, batch)
  want, want_aux = jitted(losses.CausalLossFn(families.build(GPT2), z_loss=1e-4))(
      params, prepended)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  np.testing.assert_allclose(got_aux["log_likelihood"], want_aux["log_likelihood"],
                             rtol=1e-5)


def test_lopa_features_see_the_input_only():
  """Changing a row's targets leaves LoPA's prompt, hence every logit at the input
  positions, unchanged (the features pool the positions a prefill holds)."""
  method = lopa(length=2, rank=2, hidden_dim=8, dropout_rate=0.0)
  _, frozen = lib.init(LLAMA, seed=0)
  params = method.initialize(jax.random.PRNGKey(0), frozen, LLAMA)
  model = method.build(LLAMA)
  one = _batch()
  other = _batch([dict(ex, targets=[(t * 7 + 3) % 97 for t in ex["targets"][:-1]] + [1])
                  for ex in EXAMPLES])
  assert np.any(one["decoder_target_tokens"] != other["decoder_target_tokens"])

  apply = jax.jit(lambda tokens, real, feature_mask: model.apply(
      {"params": params}, tokens, real, feature_mask=feature_mask))

  def input_logits(batch, feature_mask):
    real = batch["decoder_segment_ids"] > 0
    logits = apply(batch["decoder_input_tokens"], real, feature_mask)
    inputs = losses.input_positions(batch["decoder_loss_weights"], real)
    return np.asarray(logits)[:, 2:][inputs]

  masks = [losses.input_positions(b["decoder_loss_weights"],
                                  b["decoder_segment_ids"] > 0) for b in (one, other)]
  np.testing.assert_allclose(input_logits(one, masks[0]), input_logits(other, masks[1]),
                             atol=1e-6)
  # Pooling every real position (the targets too) would differ: the check can fail.
  assert not np.allclose(input_logits(one, None), input_logits(other, None),
                         atol=1e-6)
  # The input positions are those of the prefill: [bos] + inputs.
  np.testing.assert_array_equal(np.sum(masks[0], 1),
                                np.sum(one["decoder_prompt_mask"], 1))


def test_microbatched_step_equals_the_whole_batch():
  method = lopa(length=2, rank=2, hidden_dim=8, dropout_rate=0.0)
  _, frozen = lib.init(LLAMA, seed=0)
  params = method.initialize(jax.random.PRNGKey(0), frozen, LLAMA)
  trainable, frozen = params_lib.split(params, method.trainable)
  loss_fn = model_io.of(LLAMA).loss_fn(method.build(LLAMA), enable_dropout=False)
  assert isinstance(loss_fn, losses.CausalLossFn)
  batch = _batch(EXAMPLES + EXAMPLES[::-1][:1])  # 4 rows
  optimizer = optax.sgd(0.1)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), trainable,
                             optimizer.init(trainable))
  rng = jax.random.PRNGKey(0)
  step = lambda m: jax.jit(functools.partial(
      trainer.train_step, loss_fn=loss_fn, optimizer=optimizer, num_microbatches=m))
  whole, m1 = step(None)(state, frozen, batch, rng)
  parts, m2 = step(2)(state, frozen, batch, rng)
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
  for x, y in zip(jax.tree_util.tree_leaves(whole.trainable),
                  jax.tree_util.tree_leaves(parts.trainable)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert dataclasses.replace(loss_fn, z_loss=0.0) != loss_fn
