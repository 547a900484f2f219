"""Cached decoding of the decoder-only families (GPT-2, Llama): continue each input.

The same three decoders and output conventions as the T5 ones
(`prompt_tuning.models.decoding`), for a model that reads its input and its output in one
sequence:

  greedy_decode(model, params, tokens [B, T], *, max_decode_length) -> [B, L]
  sample_decode(model, params, tokens, *, rng, max_decode_length, temperature,
                top_k, top_p) -> [B, L]
  beam_search(model, params, tokens, *, max_decode_length, beam_size, alpha)
                -> ([B, L], scores [B])  (or all beams, best first)

One `prefill` runs the input with its soft prompt (or prompt bank, by
`prompt_index`) and writes the prefix, prompt and input keys/values into the cache
once; then a `lax.while_loop` feeds one generated token per step. Inputs may be
padded on either side: rows are moved to the right end (left padding) before the
prefill, so every row's last input token is the last position. The returned ids
are the generated continuation only, EOS kept, zeros after EOS.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.decoding import (NEG_INF, _check_length, _gather_beams,
                                    _reorder_cache, check_prompt_index,
                                    filter_logits, length_penalty)

Array = jax.Array
Params = Mapping[str, Any]


def left_align(tokens: Array, mask: Array) -> Tuple[Array, Array]:
  """Moves each row's real tokens to the end: tokens/mask [B, T] → [B, T].

  Works for right, left or no padding (the real tokens keep their order; a row's
  real tokens must be contiguous, as padded inputs are).
  """
  length = tokens.shape[1]
  count = jnp.sum(mask.astype(jnp.int32), axis=1, keepdims=True)  # [B, 1]
  first = jnp.argmax(mask, axis=1)[:, None]  # first real token
  target = jnp.arange(length)[None, :]  # [1, T]
  source = jnp.clip(first + target - (length - count), 0, length - 1)
  aligned_mask = target >= length - count
  aligned = jnp.where(aligned_mask, jnp.take_along_axis(tokens, source, axis=1), 0)
  return aligned, aligned_mask


def _prefill(model, params, tokens, mask, prompt_index, new_tokens):
  """(next-token logits [B, V], cache) after the (left-aligned) input; `mask`
  [B, T] marks real tokens (None: `tokens > 0`)."""
  tokens, mask = left_align(tokens, tokens > 0 if mask is None else mask.astype(bool))
  logits, variables = model.apply({"params": params}, tokens, mask,
                                  new_tokens=new_tokens, prompt_index=prompt_index,
                                  method=model.prefill_last, mutable=["cache"])
  return logits, variables["cache"]


def _step(model, params, cache, tokens):
  """tokens [B] → (logits [B, V], cache)."""
  logits, variables = model.apply({"params": params, "cache": cache},
                                  tokens[:, None], method=model.step,
                                  mutable=["cache"])
  return logits[:, 0], variables["cache"]


def _token_loop(model, params, tokens, mask, prompt_index, length, eos_id, choose):
  """`choose(logits [B, V], step) -> tokens [B]`; returns [B, L]."""
  logits, cache = _prefill(model, params, tokens, mask, prompt_index, length)
  batch = tokens.shape[0]

  def cond(state):
    step, _, _, _, done = state
    return (step < length) & ~jnp.all(done)

  def body(state):
    step, cache, logits, out, done = state
    token = jnp.where(done, 0, choose(logits, step).astype(jnp.int32))
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    done = done | (token == eos_id)
    logits, cache = _step(model, params, cache, token)
    return step + 1, cache, logits, out, done

  state = (jnp.array(0, jnp.int32), cache, logits,
           jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, state)[3]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _greedy_jit(model, params, tokens, mask, prompt_index, length, eos_id):
  return _token_loop(model, params, tokens, mask, prompt_index, length, eos_id,
                     lambda logits, step: jnp.argmax(logits, axis=-1))


def greedy_decode(model: nn.Module, params: Params, tokens: Array, *,
                  max_decode_length: int, eos_id: int = 1,
                  prompt_index: Optional[Array] = None,
                  attention_mask: Optional[Array] = None) -> Array:
  """Greedy continuation of `tokens [B, T]` (padded on either side).

  Args:
    model: a `GPT2LMHeadModel` / `LlamaForCausalLM` with its method hooks (static).
    max_decode_length: L, the number of tokens generated at most (static).
    eos_id: ends a sequence (traced; -1 never stops).
    prompt_index: [B] prompt of a prompt bank per example.
    attention_mask: [B, T], True at real tokens (default `tokens > 0`; pass it
      when id 0 is a real token, e.g. GPT-2's "!" or a BOS of 0).

  Returns:
    [B, L] int32 generated ids, EOS kept, zeros after EOS.
  """
  _check_length(max_decode_length)
  check_prompt_index(model, tokens, prompt_index)
  return _greedy_jit(model, params, tokens, attention_mask, prompt_index,
                     max_decode_length, jnp.asarray(eos_id, jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 6, 9, 10))
def _sample_jit(model, params, tokens, mask, prompt_index, rng, length, eos_id,
                temperature, top_k, top_p):

  def choose(logits, step):
    scaled = filter_logits(logits / jnp.maximum(temperature, 1e-30), top_k, top_p)
    sampled = jax.random.categorical(jax.random.fold_in(rng, step), scaled, axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1))

  return _token_loop(model, params, tokens, mask, prompt_index, length, eos_id,
                     choose)


def sample_decode(model: nn.Module, params: Params, tokens: Array, *, rng: Array,
                  max_decode_length: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, eos_id: int = 1,
                  prompt_index: Optional[Array] = None,
                  attention_mask: Optional[Array] = None) -> Array:
  """Temperature / top-k / nucleus sampling; step i draws with `fold_in(rng, i)`.

  temperature 0 is argmax; top_k=0 and top_p=1 (static) disable the filters.
  Others as `greedy_decode`.
  """
  _check_length(max_decode_length)
  check_prompt_index(model, tokens, prompt_index)
  return _sample_jit(model, params, tokens, attention_mask, prompt_index, rng,
                     max_decode_length,
                     jnp.asarray(eos_id, jnp.int32),
                     jnp.asarray(temperature, jnp.float32), int(top_k), float(top_p))


def beam_search(model: nn.Module, params: Params, tokens: Array, *,
                max_decode_length: int, beam_size: int = 4, alpha: float = 0.6,
                eos_id: int = 1, prompt_index: Optional[Array] = None,
                return_all_beams: bool = False,
                attention_mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """Beam search with the T5 decoder's rules (see `prompt_tuning.models.decoding.
  beam_search`): 2K candidates per step, EOS hypotheses finish only within the
  first K ranks, scores are `log_prob / length_penalty(len, alpha)`.

  The input is prefilled once per example; the cache is then copied to K beams.

  Returns:
    (tokens [B, L], scores [B]), or `[B, K, L]`, `[B, K]` with `return_all_beams`.
  """
  _check_length(max_decode_length)
  if not isinstance(beam_size, int) or beam_size < 1:
    raise ValueError(f"beam_size must be a positive int; got {beam_size!r}.")
  check_prompt_index(model, tokens, prompt_index)
  seqs, scores = _beam_jit(model, params, tokens, attention_mask, prompt_index,
                           max_decode_length, beam_size, jnp.asarray(alpha, jnp.float32),
                           jnp.asarray(eos_id, jnp.int32))
  if return_all_beams:
    return seqs, scores
  return seqs[:, 0], scores[:, 0]


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _beam_jit(model, params, tokens, mask, prompt_index, length, beam_size, alpha,
              eos_id):
  k = beam_size
  logits, cache = _prefill(model, params, tokens, mask, prompt_index, length)
  batch = tokens.shape[0]
  repeat = lambda leaf: leaf if leaf.ndim == 0 else jnp.repeat(leaf, k, axis=0)
  cache = jax.tree.map(repeat, cache)  # rows b * K + j
  logits = jnp.repeat(logits, k, axis=0)  # [B*K, V]
  ranks = jnp.arange(2 * k)

  def cond(state):
    step, _, _, _, live_lp, _, fin_scores = state
    bound = live_lp[:, 0] / length_penalty(length, alpha)  # [B]
    return (step < length) & jnp.any(bound > jnp.min(fin_scores, axis=1))

  def body(state):
    step, cache, logits, live_seqs, live_lp, fin_seqs, fin_scores = state
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits).reshape(batch, k, vocab)
    candidates = (live_lp[..., None] + log_probs).reshape(batch, k * vocab)
    top_lp, top_id = jax.lax.top_k(candidates, 2 * k)  # [B, 2K], best first
    parent, token = top_id // vocab, (top_id % vocab).astype(jnp.int32)
    seqs = jax.lax.dynamic_update_slice(_gather_beams(live_seqs, parent),
                                        token[..., None], (0, 0, step))
    is_eos = token == eos_id
    new_scores = jnp.where(is_eos & (ranks < k),
                           top_lp / length_penalty(step + 1, alpha), NEG_INF)
    fin_scores, best = jax.lax.top_k(jnp.concatenate([fin_scores, new_scores], 1), k)
    fin_seqs = _gather_beams(jnp.concatenate([fin_seqs, seqs], axis=1), best)
    live_lp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), k)
    live_seqs = _gather_beams(seqs, keep)
    cache = _reorder_cache(cache, jnp.take_along_axis(parent, keep, axis=1))
    last = jnp.take_along_axis(token, keep, axis=1).reshape(-1)  # [B*K]
    logits, cache = _step(model, params, cache, last)
    return step + 1, cache, logits, live_seqs, live_lp, fin_seqs, fin_scores

  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  state = (jnp.array(0, jnp.int32), cache, logits,
           jnp.zeros((batch, k, length), jnp.int32), live_lp,
           jnp.zeros((batch, k, length), jnp.int32),
           jnp.full((batch, k), NEG_INF, jnp.float32))
  step, _, _, live_seqs, live_lp, fin_seqs, fin_scores = jax.lax.while_loop(
      cond, body, state)
  live_scores = live_lp / length_penalty(step, alpha)
  scores, best = jax.lax.top_k(jnp.concatenate([fin_scores, live_scores], 1), k)
  return _gather_beams(jnp.concatenate([fin_seqs, live_seqs], axis=1), best), scores
