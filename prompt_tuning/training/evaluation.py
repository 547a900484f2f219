"""Evaluation on a task's split: teacher-forced loss and decoded seqio metrics.

  evaluator = Evaluator(model, mesh, param_shardings, 'my_task', {'inputs': 512,
                        'targets': 8}, batch_size=32)
  results = evaluator.evaluate(params)   # {task: {'loss': …, 'accuracy': …, …}}

For every task of the mixture (or the task), in dataset order:
  * `eval_step` gives the summed cross-entropy (+ z-loss) and per-example
    log-likelihoods (for seqio score metrics);
  * `decoding.greedy_decode` generates up to `max_decode_length` tokens, which are
    detokenized, passed through the task's postprocessor (`is_target=False`, with the
    example) and scored against the postprocessed targets by the task's metric
    functions — as `seqio.Evaluator` does.
Batches are global: every host reads the whole split and feeds its own rows of each
batch; decoded tokens are gathered back to every host.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from prompt_tuning.training import losses, rank_eval
from prompt_tuning import partitioning

Params = Dict[str, Any]
Batch = Dict[str, Any]

# Metrics that are not scores (never picked as the metric to track).
COUNTS = ("loss", "z_loss", "num_examples", "num_truncated")


# ------------------------------------------------------------------------------------
# The pure step.
# ------------------------------------------------------------------------------------


def eval_step(params: Params, batch: Batch, *, loss_fn: losses.LossFn
              ) -> Dict[str, jax.Array]:
  """Teacher-forced loss sums of one batch (no dropout, no normalization).

  Args:
    params: the full parameter tree (frozen + trained).
    batch: `MODEL_FEATURES`, each `[B, T]`.
    loss_fn: the loss with `loss_normalizing_factor=None` (sums) (static).

  Returns:
    `loss_sum`, `z_loss_sum`, `weight_sum` (scalars) and `log_likelihood [B]`
    (sum of target log-probabilities per example, z-loss excluded).
  """
  loss_sum, aux = loss_fn(params, batch, None)
  return {"loss_sum": loss_sum, "z_loss_sum": aux["z_loss"],
          "weight_sum": aux["weight_sum"], "log_likelihood": aux["log_likelihood"]}


# ------------------------------------------------------------------------------------
# Helpers: host ↔ global arrays, metric values.
# ------------------------------------------------------------------------------------


def to_host(tree: Any) -> Any:
  """Global arrays → numpy on every host (gathers arrays spread over processes)."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and (
        not x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(get, tree)


def host_rows(batch: Batch, global_batch_size: int) -> Batch:
  """This process's contiguous rows of a global batch."""
  per_host = global_batch_size // jax.process_count()
  start = jax.process_index() * per_host
  return {k: v[start:start + per_host] for k, v in batch.items()}


def _metric_value(value: Any) -> Any:
  """seqio metric values (`Scalar`, `Text`, …) or numbers → plain python."""
  value = getattr(value, "value", value)
  if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
    return float(value)
  return value


def _predict_metric_fns(task) -> List[Callable]:
  fns = getattr(task, "predict_metric_fns", None)
  if fns is None:
    fns = task.metric_fns
  return list(fns) + list(getattr(task, "predict_with_aux_metric_fns", []) or [])


# ------------------------------------------------------------------------------------
# The evaluator.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass
class TaskResult:
  metrics: Dict[str, Any]
  inputs: List[str]
  targets: List[Any]
  predictions: List[Any]


class Evaluator:
  """Evaluates parameter trees on every task of a mixture (examples read once)."""

  def __init__(self, model, mesh: Optional[Mesh], param_shardings: Optional[Params],
               mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], *,
               batch_size: int, split: str = "validation",
               max_examples: Optional[int] = None,
               max_decode_length: Optional[int] = None, z_loss: float = 1e-4,
               use_cached: bool = False, decode: bool = True,
               decode_fn: Optional[Callable] = None,
               rank: Optional[rank_eval.RankSettings] = None,
               axis_rules: Optional[partitioning.Rules] = None):
    """See the module docstring; `decode_fn(model, params, tokens [B, T],
    max_decode_length=L) -> [B, L]` (configs/decoding, `DECODE_FN`) defaults to
    `decoding.greedy_decode`. `rank` adds rank-classification metrics for the
    tasks it has labels for (`training/rank_eval.py`). With a mesh, activations
    are constrained by `axis_rules` (default `partitioning.rules()`), as in
    training."""
    self.rank = rank
    self.model = model
    self.axis_rules = axis_rules
    self.mesh = mesh
    self.batch_size = batch_size
    self.max_decode_length = max_decode_length or int(task_feature_lengths["targets"])
    self.decode = decode
    self.decode_fn = decode_fn
    self.param_shardings = param_shardings
    self._source = dict(mixture_or_task_name=mixture_or_task_name,
                        task_feature_lengths=task_feature_lengths, split=split,
                        max_examples=max_examples, use_cached=use_cached)
    self.z_loss = z_loss
    self.examples = None  # read by `prepare` (the first `evaluate`)
    self._step = None

  def prepare(self) -> None:
    """Reads the examples and jits the step (once; `evaluate` calls it)."""
    if self.examples is not None:
      return
    mixture_or_task_name = self._source["mixture_or_task_name"]
    task_feature_lengths = self._source["task_feature_lengths"]
    split, max_examples = self._source["split"], self._source["max_examples"]
    use_cached = self._source["use_cached"]
    model, mesh, batch_size = self.model, self.mesh, self.batch_size
    param_shardings, z_loss = self.param_shardings, self.z_loss
    from prompt_tuning import data as data_lib  # pylint: disable=g-import-not-at-top
    self._data = data_lib
    self.examples = {}
    for task in data_lib.tasks_of(mixture_or_task_name):
      if split not in task.splits:
        logging.warning("Task %s has no %r split; not evaluated.", task.name, split)
        continue
      self.examples[task.name] = data_lib.eval_examples(
          task, task_feature_lengths, split, max_examples, use_cached)
      examples = self.examples[task.name]
      logging.info("Evaluation: %d examples of %s/%s.", len(examples.features),
                   task.name, split)
      if examples.num_truncated:
        logging.warning(
            "%d of %d %s/%s examples are longer than TASK_FEATURE_LENGTHS %s and "
            "were cut to fit (scores on them may suffer); raise the lengths to "
            "evaluate them whole.", examples.num_truncated, len(examples.features),
            task.name, split, dict(task_feature_lengths))
    if not self.examples:
      self.examples = None
      raise ValueError(f"Nothing to evaluate: no task of {mixture_or_task_name!r} "
                       f"has a {split!r} split.")
    step = functools.partial(eval_step, loss_fn=losses.LossFn(
        model, z_loss=z_loss, loss_normalizing_factor=None, enable_dropout=False))
    if mesh is not None:
      if batch_size % mesh.shape[partitioning.DATA] or batch_size % jax.process_count():
        raise ValueError(f"The eval batch size {batch_size} must be divisible by the "
                         f"data axis ({mesh.shape[partitioning.DATA]}) and the number "
                         "of hosts; set TrainConfig.eval_batch_size.")
      self._step = jax.jit(step, in_shardings=(param_shardings,
                                               partitioning.batch_sharding(mesh)),
                           out_shardings=partitioning.replicated(mesh))
    else:
      self._step = jax.jit(step)

  def _global(self, batch: Batch) -> Batch:
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in batch.items()}
    return partitioning.host_batch_to_global(host_rows(batch, self.batch_size),
                                             self.mesh)

  def _generate(self, params: Params, tokens: jax.Array) -> np.ndarray:
    decode_fn = self.decode_fn
    if decode_fn is None:
      from prompt_tuning.models import decoding  # pylint: disable=g-import-not-at-top
      decode_fn = decoding.greedy_decode
    out = decode_fn(self.model, params, tokens,
                    max_decode_length=self.max_decode_length)
    if isinstance(out, tuple):  # beam search: (tokens, scores)
      out = out[0]
    return to_host(out)

  def evaluate_task(self, params: Params, name: str) -> TaskResult:
    examples = self.examples[name]
    task = examples.task
    metric_fns = _predict_metric_fns(task)
    score_fns = list(getattr(task, "score_metric_fns", []) or [])
    decode = self.decode and bool(metric_fns)
    sums = {"loss_sum": 0.0, "z_loss_sum": 0.0, "weight_sum": 0.0}
    scores, tokens, ranked = [], [], []
    rank_labels = self.rank.labels.get(name) if self.rank is not None else None
    if rank_labels:
      vocab = task.output_features["targets"].vocabulary
      label_ids = rank_eval.label_tokens(vocab, rank_labels,
                                         int(getattr(vocab, "eos_id", 1)))
    n = len(examples.features)
    for i, batch in enumerate(self._data.padded_batches(examples.features,
                                                      self.batch_size)):
      real = min(self.batch_size, n - i * self.batch_size)
      global_batch = self._global(batch)
      out = to_host(self._step(params, global_batch))
      for k in sums:
        sums[k] += float(out[k])
      scores.extend(out["log_likelihood"][:real].tolist())
      if decode:
        tokens.extend(self._generate(params,
                                     global_batch["encoder_input_tokens"])[:real])
      if rank_labels:
        ranked.extend(to_host(rank_eval.rank_batch(
            self.model, params, global_batch["encoder_input_tokens"], label_ids,
            self.rank, global_batch.get("prompt_index")))[:real].tolist())
    metrics: Dict[str, Any] = {
        "loss": sums["loss_sum"] / max(sums["weight_sum"], 1.0),
        "z_loss": sums["z_loss_sum"] / max(sums["weight_sum"], 1.0),
        "num_examples": n, "num_truncated": examples.num_truncated}
    targets = examples.targets
    vocab = task.output_features["targets"].vocabulary
    predictions = []
    if decode:
      for ids, raw in zip(tokens, examples.raw):
        text = vocab.decode([int(t) for t in ids])
        predictions.append(task.postprocess_fn(text, example=raw, is_target=False))
      for fn in metric_fns:
        metrics.update({k: _metric_value(v) for k, v in fn(targets, predictions).items()})
    if rank_labels:
      metrics.update(rank_eval.metrics(ranked, rank_labels, examples.raw, targets,
                                       task.postprocess_fn, metric_fns,
                                       _metric_value))
    for fn in score_fns:
      metrics.update({k: _metric_value(v) for k, v in fn(targets, scores).items()})
    inputs = [_text(raw.get("inputs_pretokenized", "")) for raw in examples.raw]
    return TaskResult(metrics, inputs, targets, predictions)

  def evaluate(self, params: Params) -> Dict[str, TaskResult]:
    self.prepare()
    if self.mesh is None:
      return {name: self.evaluate_task(params, name) for name in self.examples}
    with partitioning.activation_partitioning(self.mesh, self.axis_rules):
      return {name: self.evaluate_task(params, name) for name in self.examples}


def _text(value: Any) -> str:
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def select_metric(results: Mapping[str, TaskResult], name: Optional[str]
                  ) -> Optional[tuple]:
  """(metric name, value averaged over tasks having it) for best-checkpoint tracking.

  `name=None` picks the first decoded metric of the first task, else `loss`.
  """
  if name is None:
    for result in results.values():
      for key, value in result.metrics.items():
        if key not in COUNTS and isinstance(
            value, (int, float)):
          name = key
          break
      if name:
        break
    name = name or "loss"
  values = [r.metrics[name] for r in results.values()
            if isinstance(r.metrics.get(name), (int, float))]
  if not values:
    return None
  return name, float(np.mean(values))
