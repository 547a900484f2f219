"""Autoregressive decoding of the frozen T5 with a key/value cache.

Three decoders share one structure: the encoder (with its prompt, selected per
example by `prompt_index`) runs once, the decoder cache is created at its full
length `L = max_decode_length`, and a `lax.while_loop` feeds one token per step
until every sequence has emitted EOS or `L` tokens were written. Everything,
loop included, is one jitted function per (model, shapes, static options), so a
batch of any prompt mix reuses one compiled program. The public functions are
thin wrappers that pass everything positionally with fixed dtypes, so the way a
caller spells its arguments never causes a recompile; they can also be called
inside an outer `jax.jit`.

  greedy_decode(model, params, tokens [B, T], *, max_decode_length) -> [B, L]
  sample_decode(model, params, tokens [B, T], *, rng, max_decode_length,
                temperature=1.0, top_k=0, top_p=1.0) -> [B, L]
  beam_search(model, params, tokens [B, T], *, max_decode_length, beam_size=4,
              alpha=0.6) -> ([B, L], scores [B])   (or all beams, best first)
  predict(model, params, batch, decode_fn=greedy_decode) -> [B, L]

Output conventions (all decoders): the decoder starts from token 0 (T5's BOS is
the pad id), the returned ids are the generated tokens only (no BOS), the EOS
token is kept, and every position after EOS is 0. A sequence that never emits
EOS fills all `L` positions.

No buffers are donated: the only inputs are the parameters and the tokens, which
callers reuse; the cache and outputs are created and updated in place inside the
compiled loop.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Mapping[str, Any]
NEG_INF = -1e10  # finite, so that (-inf) - (-inf) never produces NaN in scores


# ----------------------------------------------------------------------------
# Building blocks: encode once, create the cache, one decoder step.
# ----------------------------------------------------------------------------
def encode(model: nn.Module, params: Params, encoder_input_tokens: Array,
           prompt_index: Optional[Array] = None) -> Tuple[Array, Array]:
  """tokens [B, T] (+ prompt_index [B]) → (encoded [B, T', H], mask [B, T'])."""
  return model.apply({"params": params}, encoder_input_tokens,
                     prompt_index=prompt_index, method=model.encode)


def init_cache(model: nn.Module, params: Params, encoded: Array,
               encoder_mask: Array, max_decode_length: int) -> Any:
  """The decoder cache for `[B, L]` decoding (L = max_decode_length).

  One decoder call on a single dummy token creates it: self-attention caches of
  L zeroed positions, and cross-attention's keys and values of `encoded`,
  projected here once instead of at every step.
  """
  dummy = jnp.zeros((encoded.shape[0], 1), jnp.int32)
  _, variables = model.apply({"params": params}, encoded, encoder_mask, dummy,
                             decode=True, max_decode_length=max_decode_length,
                             method=model.decode, mutable=["cache"])
  return variables["cache"]


def decode_step(model: nn.Module, params: Params, cache: Any, encoded: Array,
                encoder_mask: Array, tokens: Array,
                max_decode_length: int) -> Tuple[Array, Any]:
  """One cached step: tokens [B] (previous outputs) → (logits [B, V] f32, cache)."""
  logits, variables = model.apply(
      {"params": params, "cache": cache}, encoded, encoder_mask, tokens[:, None],
      decode=True, max_decode_length=max_decode_length, method=model.decode,
      mutable=["cache"])
  return logits[:, 0], variables["cache"]


def _check_length(max_decode_length: int):
  if not isinstance(max_decode_length, int) or max_decode_length < 1:
    raise ValueError(f"max_decode_length must be a positive int (static); got "
                     f"{max_decode_length!r}.")


def check_prompt_index(model: nn.Module, encoder_input_tokens: Array,
                       prompt_index: Optional[Array]):
  """Validates a concrete `prompt_index [B]` before it enters a compiled function.

  Inside `jit` an out-of-range gather would silently read NaNs, so the shape and,
  for a prompt module with `num_prompts` (a `PromptBank`), the range are checked
  here; traced indices are left alone.
  """
  if prompt_index is None or isinstance(prompt_index, jax.core.Tracer):
    return
  batch = jnp.shape(encoder_input_tokens)[0]
  if jnp.shape(prompt_index) != (batch,):
    raise ValueError(f"prompt_index must be [B] = [{batch}]; got shape "
                     f"{list(jnp.shape(prompt_index))}.")
  num_prompts = getattr(getattr(model, "prompt", None), "num_prompts", None)
  if num_prompts is not None and batch:
    values = np.asarray(prompt_index)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_prompts:
      raise ValueError(f"prompt_index values must be in [0, {num_prompts}) (the "
                       f"bank's prompts); got values in [{low}, {high}].")


# ----------------------------------------------------------------------------
# Greedy and sampling: one token per sequence per step.
# ----------------------------------------------------------------------------
def _token_loop(model, params, encoder_input_tokens, prompt_index,
                max_decode_length, eos_id, choose):
  """Runs the cached loop; `choose(logits [B, V], step) -> tokens [B]`."""
  encoded, mask = encode(model, params, encoder_input_tokens, prompt_index)
  batch = encoded.shape[0]
  cache = init_cache(model, params, encoded, mask, max_decode_length)
  out = jnp.zeros((batch, max_decode_length), jnp.int32)
  last = jnp.zeros((batch,), jnp.int32)  # BOS
  done = jnp.zeros((batch,), bool)

  def cond(state):
    step, _, _, _, done = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, cache, last, out, done = state
    logits, cache = decode_step(model, params, cache, encoded, mask, last,
                                max_decode_length)
    token = jnp.where(done, 0, choose(logits, step).astype(jnp.int32))
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    return step + 1, cache, token, out, done | (token == eos_id)

  state = (jnp.array(0, jnp.int32), cache, last, out, done)
  return jax.lax.while_loop(cond, body, state)[3]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy_jit(model, params, encoder_input_tokens, prompt_index,
                max_decode_length, eos_id):
  return _token_loop(model, params, encoder_input_tokens, prompt_index,
                     max_decode_length, eos_id,
                     lambda logits, step: jnp.argmax(logits, axis=-1))


def greedy_decode(model: nn.Module, params: Params, encoder_input_tokens: Array, *,
                  max_decode_length: int, eos_id: int = 1,
                  prompt_index: Optional[Array] = None) -> Array:
  """Greedy (argmax) decoding with a key/value cache.

  Args:
    model: the `Transformer` (static: hashed into the compiled function).
    params: its parameters (`{'token_embedder': …, 'encoder': …, …}`).
    encoder_input_tokens: [B, T] int, 0-padded.
    max_decode_length: L, static; the number of tokens generated at most.
    eos_id: the token that ends a sequence (T5: 1); traced, so changing it does
      not recompile (-1 disables stopping).
    prompt_index: optional [B] int, which prompt of a prompt bank each example
      uses (see `prompt_tuning.methods.bank`).

  Returns:
    [B, L] int32 generated ids (no BOS), EOS kept, zeros after EOS.
  """
  _check_length(max_decode_length)
  check_prompt_index(model, encoder_input_tokens, prompt_index)
  return _greedy_jit(model, params, encoder_input_tokens, prompt_index,
                     max_decode_length, jnp.asarray(eos_id, jnp.int32))


def filter_logits(logits: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Masks logits [B, V] outside the top-k and/or the nucleus of mass top_p.

  top_k=0 and top_p>=1 (both static) disable the filters. The most likely token
  always stays.
  """
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # descending
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
  # The smallest logit still inside the nucleus is the cutoff.
  inside = mass_before < top_p
  cutoff = jnp.min(jnp.where(inside, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, NEG_INF, logits)


@functools.partial(jax.jit, static_argnums=(0, 5, 8, 9))
def _sample_jit(model, params, encoder_input_tokens, prompt_index, rng,
                max_decode_length, eos_id, temperature, top_k, top_p):

  def choose(logits, step):
    scaled = logits / jnp.maximum(temperature, 1e-30)
    scaled = filter_logits(scaled, top_k, top_p)
    sampled = jax.random.categorical(jax.random.fold_in(rng, step), scaled, axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1))

  return _token_loop(model, params, encoder_input_tokens, prompt_index,
                     max_decode_length, eos_id, choose)


def sample_decode(model: nn.Module, params: Params, encoder_input_tokens: Array, *,
                  rng: Array, max_decode_length: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, eos_id: int = 1,
                  prompt_index: Optional[Array] = None) -> Array:
  """Temperature / top-k / nucleus sampling with a key/value cache.

  Args:
    rng: a PRNG key; step `i` uses `jax.random.fold_in(rng, i)`.
    temperature: divides the logits (traced, no recompile); 0 means argmax.
    top_k: keep only the k most likely tokens (static; 0 = off).
    top_p: keep the smallest set of tokens whose mass reaches top_p (static;
      1.0 = off, which also skips the per-step vocabulary sort).
    Others as in `greedy_decode`.

  Returns:
    [B, L] int32 generated ids (no BOS), EOS kept, zeros after EOS.
  """
  _check_length(max_decode_length)
  check_prompt_index(model, encoder_input_tokens, prompt_index)
  return _sample_jit(model, params, encoder_input_tokens, prompt_index, rng,
                     max_decode_length, jnp.asarray(eos_id, jnp.int32),
                     jnp.asarray(temperature, jnp.float32), int(top_k),
                     float(top_p))


# ----------------------------------------------------------------------------
# Beam search.
# ----------------------------------------------------------------------------
def length_penalty(length: Array, alpha: float) -> Array:
  """T5X/GNMT brevity penalty `((5 + length) / 6) ** alpha`; scores divide by it."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, index: Array) -> Array:
  """x [B, K, ...], index [B, K'] → [B, K', ...]."""
  return jax.vmap(lambda row, idx: row[idx])(x, index)


def _reorder_cache(cache: Any, parent: Array) -> Any:
  """Reorders every `[B*K, …]` cache leaf by parent beam [B, K]; scalars stay."""
  batch, beams = parent.shape

  def reorder(leaf):
    if leaf.ndim == 0:
      return leaf  # cache_index: one position shared by all beams
    split = leaf.reshape((batch, beams) + leaf.shape[1:])
    return _gather_beams(split, parent).reshape(leaf.shape)

  return jax.tree.map(reorder, cache)


def beam_search(model: nn.Module, params: Params, encoder_input_tokens: Array, *,
                max_decode_length: int, beam_size: int = 4, alpha: float = 0.6,
                eos_id: int = 1, prompt_index: Optional[Array] = None,
                return_all_beams: bool = False) -> Tuple[Array, Array]:
  """Beam search with a length penalty and a per-beam key/value cache.

  The encoder runs once per example; its output, mask and the decoder cache are
  expanded to `B * beam_size` rows (row `b * K + k` is beam k of example b).

  Rules (K = beam_size):
    * each step ranks the 2K best extensions of the K live beams by log-prob;
    * an extension ending in EOS becomes a finished hypothesis only if it ranks
      among the first K (as in Hugging Face), with score
      `log_prob / length_penalty(len, alpha)`, len counting EOS;
    * the K best non-EOS extensions stay live;
    * search stops once no live beam can still beat the worst of the K finished
      ones (`best_live_log_prob / length_penalty(L)` is an upper bound), or
      after L steps; live beams are then scored as finished at their length.
  Hence with alpha=0, beam_size=1 is exactly greedy decoding.

  Args:
    alpha: length-penalty exponent (traced; T5X default 0.6).
    return_all_beams: return all K hypotheses `[B, K, L]`, `[B, K]` (best first)
      instead of the best one.
    Others as in `greedy_decode`.

  Returns:
    (tokens [B, L] int32, scores [B] f32): the best hypothesis per example and
    its length-normalized log-likelihood; EOS kept, zeros after EOS.
  """
  _check_length(max_decode_length)
  if not isinstance(beam_size, int) or beam_size < 1:
    raise ValueError(f"beam_size must be a positive int; got {beam_size!r}.")
  check_prompt_index(model, encoder_input_tokens, prompt_index)
  seqs, scores = _beam_jit(model, params, encoder_input_tokens, prompt_index,
                           max_decode_length, beam_size,
                           jnp.asarray(alpha, jnp.float32),
                           jnp.asarray(eos_id, jnp.int32))
  if return_all_beams:
    return seqs, scores
  return seqs[:, 0], scores[:, 0]


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _beam_jit(model, params, encoder_input_tokens, prompt_index, max_decode_length,
              beam_size, alpha, eos_id):
  """All K hypotheses, best first: ([B, K, L], [B, K])."""
  k, length = beam_size, max_decode_length
  encoded, mask = encode(model, params, encoder_input_tokens, prompt_index)
  batch = encoded.shape[0]
  encoded = jnp.repeat(encoded, k, axis=0)  # [B*K, T', H]
  mask = jnp.repeat(mask, k, axis=0)  # [B*K, T']
  cache = init_cache(model, params, encoded, mask, length)
  ranks = jnp.arange(2 * k)

  def cond(state):
    step, _, _, live_lp, _, fin_scores = state
    bound = live_lp[:, 0] / length_penalty(length, alpha)  # [B]
    improvable = bound > jnp.min(fin_scores, axis=1)
    return (step < length) & jnp.any(improvable)

  def body(state):
    step, cache, live_seqs, live_lp, fin_seqs, fin_scores = state
    last = jnp.where(step > 0,
                     live_seqs[:, :, jnp.maximum(step - 1, 0)], 0).reshape(-1)
    logits, cache = decode_step(model, params, cache, encoded, mask, last, length)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits).reshape(batch, k, vocab)
    candidates = (live_lp[..., None] + log_probs).reshape(batch, k * vocab)
    top_lp, top_id = jax.lax.top_k(candidates, 2 * k)  # [B, 2K], best first
    parent, token = top_id // vocab, (top_id % vocab).astype(jnp.int32)
    seqs = _gather_beams(live_seqs, parent)  # [B, 2K, L]
    seqs = jax.lax.dynamic_update_slice(seqs, token[..., None], (0, 0, step))
    is_eos = token == eos_id
    # Finished: EOS within the first K ranks, merged with the previous best K.
    new_scores = jnp.where(is_eos & (ranks < k),
                           top_lp / length_penalty(step + 1, alpha), NEG_INF)
    all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)  # [B, 3K]
    fin_scores, best = jax.lax.top_k(all_scores, k)
    fin_seqs = _gather_beams(jnp.concatenate([fin_seqs, seqs], axis=1), best)
    # Live: the K best extensions that did not end.
    live_lp, keep = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), k)
    live_seqs = _gather_beams(seqs, keep)
    cache = _reorder_cache(cache, jnp.take_along_axis(parent, keep, axis=1))
    return step + 1, cache, live_seqs, live_lp, fin_seqs, fin_scores

  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  state = (jnp.array(0, jnp.int32), cache,
           jnp.zeros((batch, k, length), jnp.int32), live_lp,
           jnp.zeros((batch, k, length), jnp.int32),
           jnp.full((batch, k), NEG_INF, jnp.float32))
  step, _, live_seqs, live_lp, fin_seqs, fin_scores = jax.lax.while_loop(
      cond, body, state)
  # Unfinished live beams compete at their current (possibly truncated) length.
  live_scores = live_lp / length_penalty(step, alpha)
  scores, best = jax.lax.top_k(jnp.concatenate([fin_scores, live_scores], 1), k)
  return _gather_beams(jnp.concatenate([fin_seqs, live_seqs], axis=1), best), scores


# ----------------------------------------------------------------------------
# The trainer's entry point.
# ----------------------------------------------------------------------------
def predict(model: nn.Module, params: Params, batch: Mapping[str, Array],
            decode_fn: Callable[..., Any] = greedy_decode, *,
            max_decode_length: Optional[int] = None,
            rng: Optional[Array] = None) -> Array:
  """Decodes a seqio-style batch; returns token ids [B, L] (see module docstring).

  Args:
    batch: `encoder_input_tokens` [B, T], optionally `prompt_index` [B] and
      `decoder_target_tokens` [B, L] (only its length is used, as the default L).
    decode_fn: `greedy_decode`, `beam_search`, `sample_decode` or any callable
      with their keyword signature (e.g. a gin-configured one, see
      `configs/decoding/*.gin`); a `(tokens, scores)` result is reduced to tokens.
    max_decode_length: L; defaults to the length of `decoder_target_tokens`.
    rng: passed as `rng=` when given (required by `sample_decode`).
  """
  if max_decode_length is None:
    if "decoder_target_tokens" not in batch:
      raise ValueError("predict needs max_decode_length= or a batch with "
                       "'decoder_target_tokens' (whose length is used); batch keys: "
                       f"{sorted(batch)}.")
    max_decode_length = int(batch["decoder_target_tokens"].shape[1])
  kwargs = {"max_decode_length": max_decode_length,
            "prompt_index": batch.get("prompt_index")}
  if rng is not None:
    kwargs["rng"] = rng
  out = decode_fn(model, params, batch["encoder_input_tokens"], **kwargs)
  return out[0] if isinstance(out, tuple) else out
