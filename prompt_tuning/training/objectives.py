"""Training objectives beyond token cross-entropy, as `LossFn` variants.

Chosen in gin (`configurables.py` registers the spec builders; the entry point
fills in what needs the task and the frozen model):

  train.objective = @objectives.perceptron()      # or @objectives.valid_label()
  objectives.perceptron.hinge = 1.0
  train.wayward = @objectives.wayward()
  objectives.wayward.text = "Is this review positive or negative?"
  objectives.wayward.gamma = 0.01

* `ClassificationLoss` (the official code's `extended/perceptron`): each example's
  valid labels (its task's label strings + EOS, `[C, L]`) are scored by their
  teacher-forced log-likelihood (`inference.ranking`, with the chosen length
  normalization); the gold label is the one equal to the example's target
  tokens. The loss is `losses.perceptron_loss` or `losses.valid_label_cross_entropy`
  over the C scores, plus `cross_entropy_weight` × the token cross-entropy.
  Examples whose target is none of the labels cost nothing and are counted in
  the train metric `unmatched_targets` (watch it: it should be 0).
* `WaywardLoss` (`extended/wayward`): any loss plus `gamma` × the mean squared
  distance between the trained prompt `[P, H]` and the frozen embedding of a
  discrete text prompt (its ids, looked up in the frozen table inside the step).

Both are frozen, hashable dataclasses (static arguments of the jitted step) and
keep `model` / `loss_normalizing_factor` of the `LossFn` they wrap. Label scoring
runs without dropout.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from prompt_tuning.inference import ranking
from prompt_tuning.models.decoding import encode
from prompt_tuning.params import get_param
from prompt_tuning.training import losses

Array = jax.Array
OBJECTIVES = ("perceptron", "valid_label")
# Train metrics these losses add to `aux` (the train step copies them).
AUX_METRICS = ("unmatched_targets", "wayward_distance", "objective_loss")


# ---------------------------------------------------------------- gin specs


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """What gin chooses; the entry point adds the label tokens (`classification`)."""
  objective: str = "perceptron"
  hinge: float = 0.0
  normalization: str = "sum"
  alpha: float = 0.6
  reduction: str = "mean"
  cross_entropy_weight: float = 0.0

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"Unknown objective {self.objective!r}; choose one of "
                       f"{OBJECTIVES}.")
    if self.normalization not in ranking.NORMALIZATIONS:
      raise ValueError(f"Unknown label score normalization {self.normalization!r}; "
                       f"choose one of {ranking.NORMALIZATIONS}.")
    if self.reduction not in ("sum", "mean"):
      raise ValueError(f"Objective reduction must be 'sum' or 'mean'; got "
                       f"{self.reduction!r}.")


@dataclasses.dataclass(frozen=True)
class WaywardSpec:
  """The text prompt and weight of wayward regularization (entry point: ids)."""
  text: str
  gamma: float = 0.01


def perceptron(hinge: float = 0.0, normalization: str = "sum", alpha: float = 0.6,
               reduction: str = "mean", cross_entropy_weight: float = 0.0
               ) -> ObjectiveSpec:
  """The perceptron ranking loss over each task's labels (gin:
  `objectives.perceptron`); see `losses.perceptron_loss`."""
  return ObjectiveSpec("perceptron", hinge, normalization, alpha, reduction,
                       cross_entropy_weight)


def valid_label(normalization: str = "sum", alpha: float = 0.6,
                reduction: str = "mean", cross_entropy_weight: float = 0.0
                ) -> ObjectiveSpec:
  """Cross-entropy over the valid labels' scores (gin: `objectives.valid_label`)."""
  return ObjectiveSpec("valid_label", 0.0, normalization, alpha, reduction,
                       cross_entropy_weight)


def wayward(text: str = "", gamma: float = 0.01) -> WaywardSpec:
  """Wayward regularization toward the embedding of `text` (gin:
  `objectives.wayward`)."""
  if not text:
    raise ValueError("objectives.wayward needs the text prompt: set "
                     "--gin.objectives.wayward.text=\"'…'\".")
  return WaywardSpec(text, gamma)


# ---------------------------------------------------------------- losses


def gold_labels(targets: Array, label_tokens: Array) -> Array:
  """[B, C] bool: label c is example b's target (ids equal up to padding).

  targets [B, T] and label_tokens [C, L] are 0-padded; a label of more than T
  real tokens never matches.
  """
  length = targets.shape[1]
  too_long = ranking.label_lengths(label_tokens) > length  # [C]
  cut = label_tokens[:, :length]
  padded = jnp.pad(cut, ((0, 0), (0, length - cut.shape[1])))  # [C, T]
  equal = jnp.all(targets[:, None, :] == padded[None, :, :], axis=-1)  # [B, C]
  return equal & ~too_long[None, :]


def label_scores(model: Any, params: Any, encoder_input_tokens: Array,
                 label_tokens: Array, normalization: str = "sum",
                 alpha: float = 0.6, prompt_index: Optional[Array] = None) -> Array:
  """[B, C] (normalized) log-likelihood of every label for every input, with
  gradients (the encoder runs once per input; `prompt_index [B]` for a bank)."""
  num_labels = label_tokens.shape[0]
  encoded, mask = encode(model, params, encoder_input_tokens, prompt_index)
  batch = encoded.shape[0]
  encoded = jnp.repeat(encoded, num_labels, axis=0)  # row b * C + c
  mask = jnp.repeat(mask, num_labels, axis=0)
  targets = jnp.tile(label_tokens, (batch, 1))
  index = None if prompt_index is None else jnp.repeat(prompt_index, num_labels)
  scores = ranking.score_encoded(model, params, encoded, mask, targets,
                                 index).reshape(batch, num_labels)
  return ranking.normalize(scores, ranking.label_lengths(label_tokens),
                           normalization, alpha)


@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
  """A perceptron / valid-label objective over `label_tokens` (module docstring).

  Attributes:
    base: the token cross-entropy `LossFn` (its model; its loss is added with
      `spec.cross_entropy_weight`).
    label_tokens: `[C, L]` ids of the valid labels (+ EOS), as nested tuples.
    spec: the objective's settings.
  """
  base: losses.LossFn
  label_tokens: Tuple[Tuple[int, ...], ...]
  spec: ObjectiveSpec = ObjectiveSpec()

  @property
  def model(self):
    return self.base.model

  @property
  def loss_normalizing_factor(self):
    return self.base.loss_normalizing_factor

  def __call__(self, params: Any, batch: Dict[str, Array], rng: Optional[Array] = None
               ) -> Tuple[Array, Dict[str, Array]]:
    ce, aux = self.base(params, batch, rng)
    labels = jnp.asarray(self.label_tokens, jnp.int32)
    scores = label_scores(self.model, params, batch["encoder_input_tokens"], labels,
                          self.spec.normalization, self.spec.alpha,
                          batch.get("prompt_index"))
    gold = gold_labels(batch["decoder_target_tokens"], labels)
    matched = jnp.any(gold, axis=-1)  # [B]
    if self.spec.objective == "perceptron":
      _, per_example = losses.perceptron_loss(scores, gold, hinge=self.spec.hinge,
                                              reduction="none")
    else:
      _, per_example = losses.valid_label_cross_entropy(scores, gold,
                                                        reduction="none")
    per_example = jnp.where(matched, per_example, 0.0)
    objective = jnp.sum(per_example)
    if self.spec.reduction == "mean":
      objective = objective / jnp.maximum(jnp.sum(matched), 1)
    aux = dict(aux, unmatched_targets=jnp.sum(~matched).astype(jnp.float32),
               objective_loss=objective)
    if self.spec.cross_entropy_weight:
      return objective + self.spec.cross_entropy_weight * ce, aux
    return objective, dict(aux, z_loss=jnp.zeros((), jnp.float32))


@dataclasses.dataclass(frozen=True)
class WaywardLoss:
  """`base` plus `gamma` × the squared distance of the prompt to a text prompt.

  Attributes:
    base: any loss function with this interface.
    text_ids: P ids of the text prompt (the entry point tiles or cuts it to P).
    gamma: the regularization weight.
    prompt_path: the trained `[P, H]` prompt in the parameter tree.
    embedding_path: the frozen token embedding `[V, H]`.
  """
  base: Any
  text_ids: Tuple[int, ...]
  gamma: float
  prompt_path: str
  embedding_path: str

  @property
  def model(self):
    return self.base.model

  @property
  def loss_normalizing_factor(self):
    return self.base.loss_normalizing_factor

  def __call__(self, params: Any, batch: Dict[str, Array], rng: Optional[Array] = None
               ) -> Tuple[Array, Dict[str, Array]]:
    loss, aux = self.base(params, batch, rng)
    embedding = get_param(params, self.embedding_path)
    text_prompt = jax.lax.stop_gradient(
        jnp.take(embedding, jnp.asarray(self.text_ids, jnp.int32), axis=0))
    total, distance = losses.wayward_loss(loss, get_param(params, self.prompt_path),
                                          text_prompt, self.gamma)
    return total, dict(aux, wayward_distance=distance)
