"""Rank classification: score candidate label sequences instead of decoding.

The model picks, among K label strings (e.g. `positive` / `negative`), the one with
the highest teacher-forced log-likelihood `sum_t log p(label_t | label_<t, input)`.
Padding (id 0) in a label is ignored; include EOS (id 1) in the labels to make
the model also commit to ending there, as seqio's `append_eos` does for targets.

  score_sequences(model, params, inputs [B, T], targets [B, L]) -> [B]
  rank_classify(model, params, inputs [B, T], label_tokens [K, L])
      -> (best [B], scores [B, K])

`rank_classify` encodes each input once and repeats the encoder output K times;
ties go to the lowest label index (`argmax`). Both are thin wrappers over jitted
functions (the model is static), usable inside an outer `jax.jit`.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.decoding import check_prompt_index, encode

Array = jax.Array
Params = Mapping[str, Any]


def shift_right(targets: Array) -> Array:
  """Teacher-forcing decoder inputs: [B, L] → [B, L], BOS (0) then targets[:, :-1]."""
  return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def score_encoded(model: nn.Module, params: Params, encoded: Array,
                  encoder_mask: Array, target_tokens: Array) -> Array:
  """Sum of target log-probs [B] given the encoder output [B, T', H], mask [B, T'].

  target_tokens [B, L] int; positions with id 0 are not scored.
  """
  logits = model.apply({"params": params}, encoded, encoder_mask,
                       shift_right(target_tokens), method=model.decode)  # [B, L, V]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(log_probs, target_tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(target_tokens > 0, token_lp, 0.0), axis=-1)


def score_sequences(model: nn.Module, params: Params, encoder_input_tokens: Array,
                    target_tokens: Array, *,
                    prompt_index: Optional[Array] = None) -> Array:
  """Teacher-forced log-likelihood of each target.

  Args:
    model: the `Transformer` (static).
    params: its parameters.
    encoder_input_tokens: [B, T] int, 0-padded.
    target_tokens: [B, L] int, 0-padded (padding is not scored).
    prompt_index: optional [B] int for a prompt bank.

  Returns:
    [B] float32, `sum_t log p(target_t | target_<t, input)` over non-pad t.
  """
  check_prompt_index(model, encoder_input_tokens, prompt_index)
  return _score_jit(model, params, encoder_input_tokens, target_tokens,
                    prompt_index)


@functools.partial(jax.jit, static_argnums=0)
def _score_jit(model, params, encoder_input_tokens, target_tokens, prompt_index):
  encoded, mask = encode(model, params, encoder_input_tokens, prompt_index)
  return score_encoded(model, params, encoded, mask, target_tokens)


def rank_classify(model: nn.Module, params: Params, encoder_input_tokens: Array,
                  label_tokens: Array, *,
                  prompt_index: Optional[Array] = None) -> Tuple[Array, Array]:
  """Picks the most likely of K label sequences for every input.

  Args:
    encoder_input_tokens: [B, T] int.
    label_tokens: [K, L] int, one 0-padded row per label (shared by the batch).
    prompt_index: optional [B] int for a prompt bank.

  Returns:
    (best [B] int32 label index, scores [B, K] float32 log-likelihoods).
  """
  if jnp.ndim(label_tokens) != 2:
    raise ValueError(f"rank_classify: label_tokens must be [K, L]; got shape "
                     f"{jnp.shape(label_tokens)}.")
  check_prompt_index(model, encoder_input_tokens, prompt_index)
  return _rank_jit(model, params, encoder_input_tokens, label_tokens, prompt_index)


@functools.partial(jax.jit, static_argnums=0)
def _rank_jit(model, params, encoder_input_tokens, label_tokens, prompt_index):
  num_labels = label_tokens.shape[0]
  encoded, mask = encode(model, params, encoder_input_tokens, prompt_index)
  batch = encoded.shape[0]
  # Row b * K + k scores label k for example b.
  encoded = jnp.repeat(encoded, num_labels, axis=0)  # [B*K, T', H]
  mask = jnp.repeat(mask, num_labels, axis=0)
  targets = jnp.tile(label_tokens, (batch, 1))  # [B*K, L]
  scores = score_encoded(model, params, encoded, mask, targets).reshape(
      batch, num_labels)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores
