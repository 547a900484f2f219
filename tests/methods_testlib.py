"""Shared pieces of the method / optimizer / export tests (tests/test_methods_*.py,
tests/test_optim*.py, tests/test_prompt_files.py): a tiny config, random parameters
without compiling `init`, a batch and the teacher-forced loss.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.training import losses, trainer
from prompt_tuning import params as params_lib
from prompt_tuning.params import flatten
from prompt_tuning.models.config import preset

VOCAB = 128


def tiny_config(**overrides):
  """H=32, 4 heads of 8, MLP 64, 2+2 layers, a 128-token vocabulary."""
  return preset("tiny", vocab_size=VOCAB, dropout_rate=0.0, **overrides)


def one_layer_config(**overrides):
  """`tiny_config` with one layer per stack: the cheapest graph to compile."""
  return tiny_config(num_encoder_layers=1, num_decoder_layers=1, **overrides)


def batch(seed: int = 0, size: int = 2, inputs: int = 7, targets: int = 4):
  """(encoder tokens [B, T] padded at the end, decoder inputs, targets [B, T_dec])."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, VOCAB, size=(size, inputs))
  for b in range(size):  # different lengths, padding at the end
    enc[b, inputs - 1 - (b % 3):] = 0
  tgt = rng.randint(2, VOCAB, size=(size, targets))
  tgt[0, -1] = 0  # one padded target position
  dec = np.concatenate([np.zeros((size, 1), int), tgt[:, :-1]], axis=1)
  return jnp.asarray(enc), jnp.asarray(dec), jnp.asarray(tgt)


def abstract_params(model, enc, dec):
  """Shapes and dtypes of `model`'s (unboxed) parameters, without running init."""
  return jax.eval_shape(
      lambda: nn.unbox(model.init(jax.random.PRNGKey(0), enc, dec)["params"]))


def random_params(model, enc, dec, seed: int = 0):
  """Parameters of `model` drawn in numpy (no XLA compile of `init`).

  Kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1²), other vectors and the
  relative-position tables ~ N(0, 0.1²), the token embedding ~ N(0, 1).
  """
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      values = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("['embedding']") and "token_embedder" in name:
      values = rng.standard_normal(shape)
    elif len(shape) >= 2 and "rel_embedding" not in name:
      values = rng.standard_normal(shape) / np.sqrt(shape[0])
    else:
      values = 0.1 * rng.standard_normal(shape)
    return jnp.asarray(values, jnp.float32)

  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: draw(path, leaf.shape), abstract_params(model, enc, dec))


def loss(model, params, enc, dec, tgt, **kwargs):
  """Cross-entropy averaged over the real (non-padding) target tokens."""
  logits = model.apply({"params": params}, enc, dec, **kwargs)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  token = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
  weights = (tgt > 0).astype(jnp.float32)
  return jnp.sum(token * weights) / jnp.sum(weights)


def changed_after_steps(method, config, params, steps: int = 2, seed: int = 0):
  """Paths whose values differ after `steps` Adam steps of `trainer.train_step`.

  Runs the real train step (trainable / frozen split by the method's regexes) on
  `batch(seed)`; returns (changed paths, all paths).
  """
  model = method.build(config)
  enc, dec, tgt = batch(seed)
  data = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(jnp.float32)}
  trainable, frozen = params_lib.split(params, method.trainable)
  optimizer = optax.adam(0.05)
  state = trainer.TrainState(jnp.asarray(0, jnp.int32), trainable,
                             optimizer.init(trainable))
  loss_fn = losses.LossFn(model, z_loss=0.0, loss_normalizing_factor=None,
                          enable_dropout=False)
  step = jax.jit(lambda s, f, b, r: trainer.train_step(
      s, f, b, r, loss_fn=loss_fn, optimizer=optimizer))
  for _ in range(steps):
    state, _ = step(state, frozen, data, jax.random.PRNGKey(0))
  after = flatten(params_lib.merge(state.trainable, frozen))
  before = flatten(params)
  changed = sorted(p for p in before
                   if not np.array_equal(np.asarray(before[p]), np.asarray(after[p])))
  return changed, sorted(before)


# Embedding tables whose rows name their ids, and a word-to-ids vocabulary.
def row_id_table(vocab=6000, width=4):
  """An embedding table whose row i is all i, so a row names its id."""
  return jnp.broadcast_to(jnp.arange(vocab, dtype=jnp.float32)[:, None], (vocab, width))


def ids_of_rows(rows):
  rows = np.asarray(rows)
  assert np.all(rows == rows[:, :1]), "rows are not whole embedding rows"
  return rows[:, 0].astype(int)


class FakeVocab:
  """Maps each word to fixed ids: 'a b' → [1, 2]."""

  def __init__(self, table):
    self.table = table

  def encode(self, text):
    return [i for word in text.split() for i in self.table[word]]
