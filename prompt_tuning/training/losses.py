"""Teacher-forced sequence loss: cross-entropy plus T5X's z-loss.

Definitions follow T5X (`t5x/losses.py`):

  per token:   ce = logsumexp(logits) - logits[target]
               z  = z_loss * logsumexp(logits) ** 2
  per batch:   loss = sum_t w_t * (ce_t + z_t) / normalizer

where `w_t` are the decoder loss weights (1 on real target tokens, 0 on padding) and
the normalizer is, by default, the number of real target tokens in the (global)
batch (T5X's `SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS`). A float
normalizer (T5X finetune's constant `LOSS_NORMALIZING_FACTOR`) or `None` (a plain
sum) are also accepted. The z-loss keeps `log Z` near 0 and is part of the loss
that is differentiated and reported, as in T5X.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from prompt_tuning.training import telemetry as telemetry_lib

Array = jax.Array
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
Normalizer = Union[None, float, str]


def token_cross_entropy(logits: Array, targets: Array,
                        z_loss: float = 0.0) -> Tuple[Array, Array]:
  """Per-token losses.

  Args:
    logits: `[B, T, V]` (any float dtype; computed in float32).
    targets: `[B, T]` integer token ids.
    z_loss: coefficient of the `log(Z)^2` auxiliary term.

  Returns:
    (ce + z, z), both `[B, T]` float32: the total per-token loss (cross-entropy plus
    the z-loss term) and the z-loss term alone.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  z_term = z_loss * jnp.square(log_z)
  return log_z - target_logit + z_term, z_term


def normalizer_value(weights: Array, loss_normalizing_factor: Normalizer) -> Array:
  """The divisor of the summed loss: real-token count, a constant, or 1 (sum)."""
  if loss_normalizing_factor is None:
    return jnp.asarray(1.0, jnp.float32)
  if isinstance(loss_normalizing_factor, str):
    if loss_normalizing_factor != NUM_REAL_TARGET_TOKENS:
      raise ValueError(
          f"Unknown loss_normalizing_factor {loss_normalizing_factor!r}; use "
          f"{NUM_REAL_TARGET_TOKENS!r}, a number, or None (sum).")
    return jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)
  return jnp.asarray(loss_normalizing_factor, jnp.float32)


def weighted_cross_entropy(
    logits: Array, targets: Array, weights: Optional[Array], *, z_loss: float = 1e-4,
    loss_normalizing_factor: Normalizer = NUM_REAL_TARGET_TOKENS,
) -> Tuple[Array, Array, Array]:
  """Batch loss as in T5X's `compute_weighted_cross_entropy` (no label smoothing).

  Args:
    logits: `[B, T, V]` decoder logits.
    targets: `[B, T]` target ids (`decoder_target_tokens`).
    weights: `[B, T]` loss weights (`decoder_loss_weights`); None means
      `targets > 0`.
    z_loss: z-loss coefficient (T5X default 1e-4).
    loss_normalizing_factor: see the module docstring.

  Returns:
    (loss, z_loss_part, weight_sum): scalar float32 loss (z-loss included), the
    z-loss part of it (same normalization) and the number of weighted tokens.
  """
  if weights is None:
    weights = targets > 0
  weights = weights.astype(jnp.float32)
  total, z_term = token_cross_entropy(logits, targets, z_loss)
  norm = normalizer_value(weights, loss_normalizing_factor)
  return (jnp.sum(total * weights) / norm, jnp.sum(z_term * weights) / norm,
          jnp.sum(weights))


@dataclasses.dataclass(frozen=True)
class LossFn:
  """`loss_fn(params, batch, rng) -> (loss, aux)`: where a model meets the loss.

  The train step, evaluation, the tiny model's pretraining and the benchmarks all
  call this; nothing else applies a model to compute a loss.

  Args (of a call):
    params: the full parameter tree (frozen + trained).
    batch: `encoder_input_tokens [B, T_in]`, `decoder_input_tokens`,
      `decoder_target_tokens`, `decoder_loss_weights [B, T_out]`.
    rng: the dropout key; None runs without dropout.

  Returns:
    (loss, aux): the scalar loss (z-loss included, divided as
    `loss_normalizing_factor` says) and `aux` = `z_loss` (its part of the loss),
    `weight_sum` (weighted target tokens) and `log_likelihood [B]` (each example's
    summed target log-probabilities, z-loss excluded).

  With `telemetry=True`, `aux` also holds what the model sows for training
  telemetry (`training/telemetry.py`: LoPA's `gate_near_0`, `gate_near_1`).

  Frozen and hashable: a static argument of jitted steps, so runs with equal
  settings share one compiled program.
  """
  model: Any
  z_loss: float = 1e-4
  loss_normalizing_factor: Normalizer = NUM_REAL_TARGET_TOKENS
  enable_dropout: bool = True
  telemetry: bool = False

  def __call__(self, params: Any, batch: Dict[str, Array], rng: Optional[Array] = None
               ) -> Tuple[Array, Dict[str, Array]]:
    dropout = self.enable_dropout and rng is not None
    sown = {}
    apply = functools.partial(
        self.model.apply, {"params": params}, batch["encoder_input_tokens"],
        batch["decoder_input_tokens"], enable_dropout=dropout,
        rngs={"dropout": rng} if dropout else None)
    if self.telemetry:
      logits, mutated = apply(mutable=["intermediates"])
      sown = telemetry_lib.collected_gates(mutated.get("intermediates", {}))
    else:
      logits = apply()
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    total, z_term = token_cross_entropy(logits, batch["decoder_target_tokens"],
                                        self.z_loss)
    norm = normalizer_value(weights, self.loss_normalizing_factor)
    aux = {"z_loss": jnp.sum(z_term * weights) / norm,
           "weight_sum": jnp.sum(weights),
           "log_likelihood": -jnp.sum((total - z_term) * weights, axis=-1), **sown}
    return jnp.sum(total * weights) / norm, aux


# ------------------------------------------------------------------------------------
# Classification objectives over the valid labels (the official prompt-tuning code's
# `extended/perceptron`) and the wayward regularizer (`extended/wayward`).
#
# The label scores come from `inference.ranking.label_scores`: one (optionally
# length-normalized) teacher-forced log-likelihood per candidate label, [B, C].
# ------------------------------------------------------------------------------------


def _gold_mask(scores: Array, gold: Array) -> Array:
  """`gold` as a [B, C] float one-hot: given as indices [B] or as a [B, C] mask."""
  gold = jnp.asarray(gold)
  if gold.ndim == 1:
    return jax.nn.one_hot(gold, scores.shape[-1], dtype=jnp.float32)
  if gold.shape != scores.shape:
    raise ValueError(f"gold labels must be indices [B] or a one-hot [B, C] like the "
                     f"scores {list(scores.shape)}; got {list(gold.shape)}.")
  return gold.astype(jnp.float32)


def _masked(scores: Array, valid: Optional[Array]) -> Array:
  scores = scores.astype(jnp.float32)
  if valid is None:
    return scores
  return jnp.where(valid, scores, -jnp.inf)


def perceptron_loss(scores: Array, gold: Array, *, hinge: float = 0.0,
                    valid: Optional[Array] = None,
                    reduction: str = "sum") -> Tuple[Array, Array]:
  """Perceptron ranking loss over the candidate labels.

  Per example: `max(0, hinge + max_c s_c - s_gold)`, the maximum running over all
  valid labels, the gold one included (as in the official code's
  `PerceptronLossEncoderDecoderModel`): with `hinge = 0` an example whose gold label
  already scores highest costs nothing; with `hinge > 0` it still costs `hinge`
  (and pushes the gold score up) unless another label ties it from above.

  Args:
    scores: [B, C] label scores (e.g. log-likelihoods of each label sequence).
    gold: [B] int index of the correct label, or a [B, C] one-hot (`is_correct`).
    hinge: the margin added to the score difference.
    valid: optional [B, C] bool; False labels take no part (padding when examples
      have different numbers of labels).
    reduction: 'sum' over the batch (the official code), 'mean' or 'none'.

  Returns:
    (loss, per_example [B]): loss is a scalar, or [B] for reduction='none'.
  """
  masked = _masked(scores, valid)
  gold_mask = _gold_mask(masked, gold)
  gold_score = jnp.sum(jnp.where(gold_mask > 0, masked, 0.0), axis=-1)  # [B]
  best = jnp.max(masked, axis=-1)  # [B]
  per_example = jnp.maximum(0.0, hinge + best - gold_score)
  return _reduce(per_example, reduction), per_example


def valid_label_cross_entropy(scores: Array, gold: Array, *,
                              valid: Optional[Array] = None,
                              reduction: str = "mean") -> Tuple[Array, Array]:
  """Cross-entropy with the label scores as logits (softmax over valid labels only).

  Args / Returns as `perceptron_loss`; `reduction` defaults to the batch mean.
  """
  masked = _masked(scores, valid)
  gold_mask = _gold_mask(masked, gold)
  log_probs = jax.nn.log_softmax(masked, axis=-1)
  per_example = -jnp.sum(jnp.where(gold_mask > 0, log_probs, 0.0), axis=-1)
  return _reduce(per_example, reduction), per_example


def _reduce(values: Array, reduction: str) -> Array:
  if reduction == "sum":
    return jnp.sum(values)
  if reduction == "mean":
    return jnp.mean(values)
  if reduction == "none":
    return values
  raise ValueError(f"Unknown reduction {reduction!r}; use 'sum', 'mean' or 'none'.")


def wayward_distance(prompt: Array, text_prompt: Array) -> Array:
  """Squared L2 distance per prompt position, averaged over positions.

  `sum_p ||prompt_p - text_prompt_p||^2 / P` for prompt, text_prompt [P, H] (the
  official code's `squared_l2_distance`).
  """
  prompt = jnp.asarray(prompt, jnp.float32)
  text_prompt = jnp.asarray(text_prompt, jnp.float32)
  if prompt.ndim != 2 or prompt.shape != text_prompt.shape:
    raise ValueError(f"wayward regularization compares a prompt [P, H] with the "
                     f"embedded text prompt of the same shape; got "
                     f"{list(prompt.shape)} and {list(text_prompt.shape)}. Embed a text "
                     f"of exactly P tokens (pad or truncate it) for the target.")
  return jnp.sum(jnp.square(prompt - text_prompt)) / prompt.shape[0]


def wayward_loss(task_loss: Array, prompt: Array, text_prompt: Array,
                 gamma: float = 0.01) -> Tuple[Array, Array]:
  """Task loss plus `gamma * wayward_distance(prompt, text_prompt)` (Khashabi et al.
  2021, "Prompt Waywardness"): keeps the soft prompt near the embedding of a
  discrete text prompt `[P, H]` (e.g. `token_embedder/embedding[ids]`).

  Returns:
    (total, distance): both float32 scalars.
  """
  distance = wayward_distance(prompt, text_prompt)
  return task_loss + gamma * distance, distance
