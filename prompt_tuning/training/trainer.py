"""The training loop: pure steps, compiled once with shardings, and the loop itself.

Read top to bottom:
  1. TrainConfig      the run's settings (one small dataclass, bound by gin in train.py)
  2. TrainState       step + trainable parameters + optimizer state (what is saved)
  3. train_step       pure: (state, frozen, batch, rng) -> (state, metrics)
  4. compile_steps    the one place where steps are jitted with shardings
  5. train            resume → loop (log, checkpoint, evaluate, export), handed
                      the model, its placed parameters, batches and evaluator
                      by the entry point (`prompt_tuning.train.build_and_train`)

Gradients are taken with respect to the trainable subtree only; the frozen model is
a separate argument that is never differentiated and has no optimizer state.
Randomness is `jax.random.fold_in(rng, step)`, so a resumed run sees the same
dropout masks as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from prompt_tuning.run_dir import layout
from prompt_tuning.training import early_stopping, evaluation, losses, telemetry
from prompt_tuning.training import objectives
from prompt_tuning import host_memory, partitioning
from prompt_tuning.training import opt_state_sharding
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.run_dir import summaries as summaries_lib
from prompt_tuning import params as params_lib
from prompt_tuning.errors import UserError
from prompt_tuning.methods.base import Method
from prompt_tuning.params import flatten
from prompt_tuning.models import families
from prompt_tuning.models.config import T5Config

Params = Dict[str, Any]
Batch = Dict[str, Any]

# ====================================================================================
# 1. Settings.
# ====================================================================================


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What a training run does (gin: `TrainConfig.<field>`; macros in runs/*.gin).

  Attributes:
    model_dir: `MODEL_DIR`, where checkpoints, exports and summaries go.
    mixture_or_task_name: the seqio task or mixture to train on.
    task_feature_lengths: e.g. `{'inputs': 512, 'targets': 8}`.
    train_steps: total number of steps (a restart continues up to it).
    batch_size: global batch size (split over hosts and the `data` axis).
    seed: data order, parameter init and dropout all derive from it.
    eval_period: evaluate every this many steps (0: only at the end, -1: never).
    checkpoint_period: save the state every this many steps (and at the end).
    keep_checkpoints: how many orbax checkpoints / numpy exports to keep.
    log_period: a console line + train summaries every this many steps.
    z_loss: T5X's z-loss coefficient.
    loss_normalizing_factor: 'NUM_REAL_TARGET_TOKENS', a number, or None (sum).
    enable_dropout: dropout in the frozen model while training (T5X finetune: on).
    train_split / eval_split: dataset splits.
    eval_batch_size: defaults to `batch_size`.
    max_eval_examples: evaluate on at most this many examples per task.
    max_decode_length: decoded tokens at evaluation (default: targets length).
    best_metric: metric that selects the best checkpoint (default: the first decoded
      metric, else the eval loss); `best_mode` 'max' or 'min' ('min' for loss).
    use_cached: read seqio's offline cache.
    shuffle: shuffle the training examples.
    num_microbatches: split each global batch into this many microbatches whose
      gradients are accumulated in one compiled step (T5X's `num_microbatches`;
      gin: `NUM_MICROBATCHES`); the update equals the whole batch's. None or 1:
      no split. Must divide `batch_size`, and each microbatch must divide the
      `data` axis.
    rank_classification: also evaluate by rank classification over each task's
      label strings (`training/rank_eval.py`: `rank_accuracy`, `rank/<metric>`,
      selectable as `best_metric`); `rank_normalization` compares multi-token
      labels ('sum', 'mean', 'length_penalty').
    early_stopping_patience: stop after this many evaluations in a row without a
      new best `best_metric` (`training/early_stopping.py`); None: never.
  """
  model_dir: str
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  train_steps: int
  batch_size: int = 32
  seed: int = 0
  eval_period: int = 1000
  checkpoint_period: int = 1000
  keep_checkpoints: int = 1
  log_period: int = 100
  z_loss: float = 1e-4
  loss_normalizing_factor: Any = losses.NUM_REAL_TARGET_TOKENS
  enable_dropout: bool = True
  train_split: str = "train"
  eval_split: str = "validation"
  eval_batch_size: Optional[int] = None
  max_eval_examples: Optional[int] = None
  max_decode_length: Optional[int] = None
  best_metric: Optional[str] = None
  best_mode: Optional[str] = None
  use_cached: bool = False
  shuffle: bool = True
  num_microbatches: Optional[int] = None
  rank_classification: bool = False
  rank_normalization: str = "sum"
  early_stopping_patience: Optional[int] = None


# ====================================================================================
# 2. State: what changes during training (and what a checkpoint holds).
# ====================================================================================


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  trainable: Params
  opt_state: Any

  def as_dict(self) -> Dict[str, Any]:
    return {"step": self.step, "trainable": self.trainable, "opt_state": self.opt_state}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "TrainState":
    return cls(step=values["step"], trainable=values["trainable"],
               opt_state=values["opt_state"])


def _learning_rate(opt_state: Any) -> Optional[jax.Array]:
  """The `learning_rate` hyperparameter, when the optimizer injects it."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    if path and getattr(path[-1], "key", None) == "learning_rate":
      return leaf
  return None


MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens", "decoder_loss_weights")


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """`[B, ...]` → `[num_microbatches, B / num_microbatches, ...]` per feature.

  Row `r` goes to microbatch `r % num_microbatches`, so every microbatch takes the
  same number of rows from each `data` shard (a shard's contiguous rows split
  locally; nothing moves between devices).
  """
  def split(x):
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return {k: split(v) for k, v in batch.items()}


def train_step(state: TrainState, frozen: Params, batch: Batch, rng: jax.Array, *,
               loss_fn: losses.LossFn, optimizer: optax.GradientTransformation,
               num_microbatches: Optional[int] = None
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer step on the trainable parameters.

  Args:
    state: step, trainable parameters, optimizer state.
    frozen: the frozen parameters (not differentiated).
    batch: `encoder_input_tokens [B, T_in]`, `decoder_input_tokens`,
      `decoder_target_tokens`, `decoder_loss_weights [B, T_out]`.
    rng: the run's base key; this step uses `fold_in(rng, step)`.
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)` (static).
    optimizer: an optax transformation over the trainable tree (static).
    num_microbatches: M > 1 accumulates the gradients of M microbatches
      `[B / M, ...]` (`split_microbatches`) in a `lax.scan`; microbatch `i` draws
      its dropout from `fold_in(fold_in(rng, step), i)`. Each microbatch's summed
      loss (`loss_fn` with no normalizer) is divided by the whole batch's
      normalizer, so loss, gradients and update equal the whole batch's (up to
      float summation order).

  Returns:
    (new state, metrics): `loss` (z-loss included), `z_loss`, `weight_sum`,
    `grad_norm` and, when the optimizer exposes it, `learning_rate`.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  if not num_microbatches or num_microbatches == 1:
    def objective(trainable):
      return loss_fn(params_lib.merge(trainable, frozen), batch, step_rng)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.trainable)
  else:
    (loss, aux), grads = _accumulated_grads(state.trainable, frozen, batch, step_rng,
                                            loss_fn, num_microbatches)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "z_loss": aux["z_loss"], "weight_sum": aux["weight_sum"]}
  metrics.update({k: aux[k] for k in telemetry.GATE_KEYS + objectives.AUX_METRICS
                  if k in aux})
  if "truncated" in batch:  # examples cut to TASK_FEATURE_LENGTHS (data.py)
    metrics["truncated_examples"] = jnp.sum(batch["truncated"])
  lr = _learning_rate(opt_state)
  if lr is not None:
    metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
  return TrainState(state.step + 1, trainable, opt_state), metrics


def _accumulated_grads(trainable: Params, frozen: Params, batch: Batch,
                       step_rng: jax.Array, loss_fn: losses.LossFn,
                       num_microbatches: int):
  """((loss, aux), grads) of the whole batch, summed over its microbatches."""
  # The whole batch's normalizer (e.g. its real target tokens), for every microbatch.
  norm = losses.normalizer_value(batch["decoder_loss_weights"].astype(jnp.float32),
                                 loss_fn.loss_normalizing_factor)
  summed = dataclasses.replace(loss_fn, loss_normalizing_factor=None)

  def objective(params, part, part_rng):
    total, aux = summed(params_lib.merge(params, frozen), part, part_rng)
    return total / norm, {"z_loss": aux["z_loss"] / norm,
                          "weight_sum": aux["weight_sum"]}

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  parts = split_microbatches({k: batch[k] for k in MODEL_FEATURES}, num_microbatches)

  def accumulate(carry, inputs):
    index, part = inputs
    out = grad_fn(trainable, part, jax.random.fold_in(step_rng, index))
    return jax.tree_util.tree_map(jnp.add, carry, out), None

  zero = jnp.zeros((), jnp.float32)
  start = ((zero, {"z_loss": zero, "weight_sum": zero}),
           jax.tree_util.tree_map(jnp.zeros_like, trainable))
  out, _ = jax.lax.scan(accumulate, start, (jnp.arange(num_microbatches), parts))
  return out


# ====================================================================================
# 4. Compilation: shardings in one place.
# ====================================================================================


@dataclasses.dataclass
class CompiledSteps:
  """The jitted step and the shardings of everything it touches."""
  train: Callable[..., Tuple[TrainState, Dict[str, jax.Array]]]
  init_state: Callable[[Params], TrainState]
  state_shardings: Any
  frozen_shardings: Params
  batch_sharding: Any
  # `(state, frozen, batch, rng) -> jax.stages.Lowered` from abstract values (the
  # memory planner compiles without running).
  lower: Optional[Callable[..., Any]] = None


def compile_steps(loss_fn: losses.LossFn, optimizer: optax.GradientTransformation,
                  mesh: Mesh, trainable: Params, trainable_shardings: Params,
                  frozen_shardings: Params, num_microbatches: Optional[int] = None,
                  axis_rules: Optional[partitioning.Rules] = None) -> CompiledSteps:
  """Jits `train_step` with explicit in/out shardings (state donated).

  The step is traced inside `partitioning.activation_partitioning(mesh, axis_rules)`,
  so the model's activations are sharded by the same rule table as the parameters.

  Optimizer-state shardings are derived from the trainable parameters' shardings
  (`opt_state_sharding.py`: slots follow their parameter, factored Adafactor slots
  keep the matching axes, scalars are replicated), not left to XLA.
  """
  replicated = partitioning.replicated(mesh)
  opt_shardings = opt_state_sharding.opt_state_shardings(
      optimizer, trainable, trainable_shardings, mesh)
  init_opt = jax.jit(optimizer.init, in_shardings=(trainable_shardings,),
                     out_shardings=opt_shardings)
  state_shardings = TrainState(step=replicated, trainable=trainable_shardings,
                               opt_state=opt_shardings)

  def init_state(params: Params) -> TrainState:
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), replicated), params,
                      init_opt(params))

  batch_sharding = partitioning.batch_sharding(mesh)
  # The module-level function with static settings: runs with the same loss_fn,
  # optimizer and shardings reuse one compiled program.
  jitted = jax.jit(_positional_train_step, static_argnums=(4, 5, 6, 7),
                   in_shardings=(state_shardings, frozen_shardings, batch_sharding,
                                 replicated),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,))
  static = (loss_fn, optimizer, num_microbatches,
            tuple(axis_rules) if axis_rules is not None else None)
  compiled = []

  def train(state, frozen, batch, rng):
    with partitioning.activation_partitioning(mesh, axis_rules):
      out = jitted(state, frozen, batch, rng, *static)
    if not compiled:  # the first call compiled: give the compiler's memory back
      compiled.append(jax.block_until_ready(out) is not None)
      host_memory.release_freed()
    return out

  def lower(state, frozen, batch, rng):
    """The step lowered for these (abstract) arguments, e.g. to read its HLO."""
    with partitioning.activation_partitioning(mesh, axis_rules):
      return jitted.lower(state, frozen, batch, rng, *static)

  return CompiledSteps(train, init_state, state_shardings, frozen_shardings,
                       batch_sharding, lower)


def _positional_train_step(state, frozen, batch, rng, loss_fn, optimizer,
                           num_microbatches, axis_rules):
  # `axis_rules` shapes the trace (activation constraints) through the context
  # `compile_steps` enters; as a static argument it keys jit's cache too.
  del axis_rules
  return train_step(state, frozen, batch, rng, loss_fn=loss_fn, optimizer=optimizer,
                    num_microbatches=num_microbatches)


# ====================================================================================
# 5. The loop.
# ====================================================================================


class _Preemption:
  """Turns SIGTERM into a flag checked after every step (all hosts agree)."""

  def __init__(self):
    self.requested = False

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: writing a checkpoint before exiting.", signum)
    self.requested = True

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    old = signal.signal(signal.SIGTERM, self._handler)
    try:
      yield self
    finally:
      signal.signal(signal.SIGTERM, old)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.requested = True
      except RuntimeError:  # preemption service not enabled
        pass
    return self.requested


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss (or the parameters) stopped being finite; nothing bad was saved.

  Attributes:
    step: the first step found non-finite.
    last_checkpoint: the step of the last (good) checkpoint, or None.
  """

  def __init__(self, step: int, what: str, model_dir: str,
               last_checkpoint: Optional[int]):
    self.step, self.last_checkpoint = step, last_checkpoint
    if last_checkpoint is None:
      kept = ("No checkpoint was written yet. Fix the cause, then rerun (or start "
              "over with a new --gin.MODEL_DIR).")
    else:
      kept = (f"The last good checkpoint, {model_dir}/{layout.STEP_PREFIX}_"
              f"{last_checkpoint} (step {last_checkpoint}), is intact: nothing was "
              "saved after the values went bad. Fix the cause, then rerun the same "
              f"command to resume from step {last_checkpoint} (or start over with a "
              "new --gin.MODEL_DIR).")
    super().__init__(
        f"Training stopped at step {step}: {what}. Common causes: a learning rate "
        "too high for this method and model (lower it, e.g. --gin.optim."
        "adafactor_prompt_tuning.learning_rate=...), float16 overflow, or a bad "
        f"initialization (prompt file). {kept}")


@jax.jit
def _all_finite(tree: Params) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


@dataclasses.dataclass
class TrainResult:
  """What `train` returns (for tests and scripts)."""
  step: int
  trainable: Params
  losses: Dict[int, float]
  preempted: bool = False
  best: Optional[Dict[str, Any]] = None
  stopped_early: bool = False


@dataclasses.dataclass
class Built:
  """What the entry point hands the loop: the loss and the placed parameters.

  Attributes:
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)` of the method's model.
    params: the full parameter tree (frozen + method), placed on `mesh`.
    shardings: the shardings of `params` (same tree).
    mesh: the device mesh.
    axis_rules: the logical-axis rule table (activations are partitioned by it).
  """
  loss_fn: losses.LossFn
  params: Params
  shardings: Params
  mesh: Mesh
  axis_rules: Optional[partitioning.Rules] = None


def seed_keys(seed: int) -> Tuple[jax.Array, jax.Array]:
  """(parameter-init key, training key) of a run's seed."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


def run_record(config: TrainConfig, method: Method, model_config: T5Config,
               initial_checkpoint_path: Optional[str]) -> Dict[str, Any]:
  """The identity of a run, written to `MODEL_DIR/config.json`."""
  return {
      "initial_checkpoint_path": initial_checkpoint_path,
      "model_config": model_config.to_dict(),
      "method": method.name,
      "trainable": list(method.trainable),
      # Where the prompt goes ('prefix', 'suffix', 'after_bos'); serving uses it.
      "prompt_combine": getattr(method.prompt, "combine", None),
      # The adapter hook's settings (LoRA rank / alpha / targets, IA3 targets, ...);
      # scripts/export_adapter.py reads them.
      "adapter": (dataclasses.asdict(method.adapter)
                  if dataclasses.is_dataclass(method.adapter) else None),
      "task": config.mixture_or_task_name,
      "task_feature_lengths": dict(config.task_feature_lengths),
      "batch_size": config.batch_size,
      "seed": config.seed,
      "train_steps": config.train_steps,
      "train_config": {k: v for k, v in dataclasses.asdict(config).items()
                       if k != "model_dir"},
  }


def _due(step: int, period: int) -> bool:
  return period > 0 and step % period == 0


def train(config: TrainConfig, method: Method, optimizer: optax.GradientTransformation,
          built: Built, batches_fn: Callable[[int], Iterator[Batch]],
          evaluator: Optional[evaluation.Evaluator] = None,
          learning_rate_fn: Optional[Callable[[int], float]] = None) -> TrainResult:
  """Trains `method`'s parameters in `built`, resuming from `MODEL_DIR` when possible.

  The entry point (`prompt_tuning.train.build_and_train`) builds everything handed
  in here, holds MODEL_DIR's run lock and has written its `config.json`.

  Args:
    config: the run's settings.
    method: which parameters train (`trainable`) and what is exported.
    optimizer: optax transformation for the trainable parameters (`OPTIMIZER`).
    built: the model, its placed parameters, their shardings and the mesh.
    batches_fn: `start_batch -> iterator of this host's batches` (repeats forever).
    evaluator: runs at every `eval_period` (None: no evaluation).
    learning_rate_fn: step → learning rate, for summaries (optional).

  Returns:
    A `TrainResult` with the final step, trainable parameters (host numpy) and the
    training loss per step run by this call.

  Raises:
    NonFiniteLossError: the loss or the parameters became NaN/inf; nothing after
      the last good checkpoint was saved.
    train_state.CheckpointWriteError: a checkpoint could not be written.
  """
  host0 = jax.process_index() == 0
  early_stopping.check(config.early_stopping_patience, config.eval_period,
                       evaluator is not None)
  trainable, frozen = _split_trainable(method, built.params)
  trainable_shardings, frozen_shardings = params_lib.split(built.shardings,
                                                           method.trainable)
  steps = compile_steps(built.loss_fn, optimizer, built.mesh, trainable,
                        trainable_shardings, frozen_shardings, config.num_microbatches,
                        built.axis_rules)
  rng = jax.device_put(seed_keys(config.seed)[1], partitioning.replicated(built.mesh))
  checkpointer = ckpt.StateCheckpointer(config.model_dir, keep=config.keep_checkpoints)
  state, consumed, truncated, resumed = _resume(
      checkpointer, steps.init_state(trainable), config.model_dir)
  step = int(jax.device_get(state.step))
  if resumed and (step == config.train_steps or layout.stopped_early(
      config.model_dir)) and layout.is_complete(config.model_dir, step):
    logging.info("The run in %s is already complete at step %d; nothing to do.",
                 config.model_dir, step)
    checkpointer.close()
    return TrainResult(step=step, trainable=evaluation.to_host(state.trainable),
                       losses={}, best=layout.read_best_record(config.model_dir),
                     stopped_early=layout.stopped_early(config.model_dir))
  if resumed and host0 and not layout.has_export(config.model_dir, step):
    # Killed (or a full disk) between the checkpoint and its export.
    logging.warning("Rewriting the missing export of checkpoint_%d.", step)
    ckpt.export_step(config.model_dir, step, _exported(method, state.trainable, frozen),
                     keep=config.keep_checkpoints)
  finishing = resumed and step == config.train_steps  # killed after its last save
  watch = _Telemetry(built, trainable, frozen)  # before the first step donates it
  batches = batches_fn(consumed) if step < config.train_steps else iter(())
  summaries = summaries_lib.Summaries(config.model_dir, enabled=host0)
  best = layout.read_best_record(config.model_dir)
  metrics = MetricsBuffer(config, checkpointer.latest_step, truncated)
  progress = summaries_lib.Progress(config.train_steps, config.log_period, step,
                                    enabled=host0)
  preemption = _Preemption()
  preempted = stopped = False
  with preemption.installed():
    while step < config.train_steps:
      try:
        batch = next(batches)
      except StopIteration:
        raise RuntimeError(f"The training data ran out after {consumed} batches; "
                           "train_batches repeats forever, so a custom batches_fn "
                           "must too.") from None
      global_batch = partitioning.host_batch_to_global(batch, built.mesh)
      state, step_metrics = steps.train(state, frozen, global_batch, rng)
      step += 1
      consumed += 1
      metrics.add(step, step_metrics)
      if progress.due(step) or step == config.train_steps:
        scalars = _log_train(step, metrics, progress, summaries, learning_rate_fn,
                             truncation="truncated" in batch)
        watch.log(step, state.trainable, scalars, summaries)

      preempted = preemption.reached(step)
      last = step == config.train_steps
      paused = time.time()  # checkpoints and evaluations do not count in steps/s
      save_due = _due(step, config.checkpoint_period) or last or preempted
      eval_due = evaluator is not None and (
          _due(step, config.eval_period) or (last and config.eval_period >= 0))
      if save_due or eval_due:
        metrics.drain()  # the losses up to here are finite before anything is saved
      if save_due:
        _save(step, state, frozen, method, checkpointer, consumed,
              metrics.truncated_examples, config)
      if preempted:
        logging.warning("Stopped at step %d after a preemption signal; rerun the same "
                        "command to resume.", step)
        break
      if eval_due:
        best = _evaluate(step, state, frozen, method, evaluator, best, config,
                         summaries)
        stopped = early_stopping.due(step, best, config.early_stopping_patience,
                                     config.eval_period)
        if stopped:  # ends like the last step: its state and export are saved
          if not save_due:
            _save(step, state, frozen, method, checkpointer, consumed,
                  metrics.truncated_examples, config)
          break
      progress.exclude(time.time() - paused)

  metrics.drain()
  if finishing and evaluator is not None and config.eval_period >= 0:
    logging.info("Finishing the run at step %d: its final evaluation.", step)
    best = _evaluate(step, state, frozen, method, evaluator, best, config, summaries)
  if (step == config.train_steps or stopped) and not preempted and host0:
    ckpt.mark_complete(config.model_dir, step, early_stopped=stopped)
  checkpointer.close()
  summaries.close()
  return TrainResult(step=step, trainable=evaluation.to_host(state.trainable),
                     losses=metrics.losses, preempted=preempted, best=best,
                     stopped_early=stopped)


# ------------------------------------------------------------------------------------
# The loop's helpers.
# ------------------------------------------------------------------------------------


def _split_trainable(method: Method, params: Params) -> Tuple[Params, Params]:
  """(trainable, frozen) by `method.trainable`; refuses a method that trains nothing."""
  trainable, frozen = params_lib.split(params, method.trainable)
  if not flatten(trainable):
    raise ValueError(f"Method {method.name!r}: no parameter matches its trainable "
                     f"regexes {list(method.trainable)}; parameters are e.g. "
                     f"{list(flatten(params))[:5]}.")
  num_trainable = sum(int(np.prod(x.shape)) for x in flatten(trainable).values())
  logging.info("Training %d parameters in %d arrays (%s); %d frozen arrays.",
               num_trainable, len(flatten(trainable)), ", ".join(flatten(trainable)),
               len(flatten(frozen)))
  return trainable, frozen


def _resume(checkpointer: ckpt.StateCheckpointer, state: TrainState, model_dir: str
            ) -> Tuple[TrainState, int, int, bool]:
  """(state, batches consumed, truncated examples, resumed?) of the latest readable
  checkpoint (a damaged newest one falls back to the previous), or of a fresh start."""
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state.as_dict())
  resumed = checkpointer.restore_latest(abstract)
  if resumed is None:
    return state, 0, 0, False
  latest, restored, consumed, data = resumed
  truncated = int(data.get("truncated_examples", 0))
  logging.info("Resumed from %s/checkpoint_%d (%d batches consumed).", model_dir,
               latest, consumed)
  return TrainState.from_dict(restored), consumed, truncated, True


class MetricsBuffer:
  """Step metrics left on the device until a log line or a save needs them.

  `drain()` fetches them all at once and stops at the first non-finite loss or
  gradient norm (`NonFiniteLossError`), so nothing bad is ever saved.
  """

  def __init__(self, config: TrainConfig, latest_checkpoint: Callable[[], Optional[int]],
               truncated_examples: int = 0):
    self.config = config
    self.latest_checkpoint = latest_checkpoint
    self.truncated_examples = truncated_examples  # over the whole run
    self.truncated_logged = truncated_examples
    self.pending: list = []  # (step, device metrics) not fetched yet
    self.window: list = []  # host metrics since the last log line
    self.losses: Dict[int, float] = {}

  def add(self, step: int, metrics: Dict[str, jax.Array]) -> None:
    self.pending.append((step, metrics))

  def drain(self) -> None:
    fetched = jax.device_get([m for _, m in self.pending])
    for (step, _), m in zip(self.pending, fetched):
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
        raise NonFiniteLossError(
            step, f"the loss is {float(m['loss'])} and the gradient norm "
            f"{float(m['grad_norm'])}", self.config.model_dir, self.latest_checkpoint())
      self.losses[step] = float(m["loss"])
      self.truncated_examples += int(m.pop("truncated_examples", 0))
      self.window.append(m)
    self.pending.clear()

  def mean(self) -> Dict[str, float]:
    """The mean of each metric since the last call (after `drain`)."""
    mean = {k: float(np.mean([m[k] for m in self.window])) for k in self.window[-1]}
    self.window.clear()
    return mean

  def report_truncation(self, step: int) -> None:
    """A log line when more examples were truncated (a warning the first time)."""
    if self.truncated_examples > self.truncated_logged:
      (logging.warning if self.truncated_logged == 0 else logging.info)(
          "%d of %d training examples so far were longer than TASK_FEATURE_LENGTHS "
          "%s and were truncated (as seqio does); TensorBoard: truncated_examples.",
          self.truncated_examples, step * self.config.batch_size,
          dict(self.config.task_feature_lengths))
      self.truncated_logged = self.truncated_examples


def _log_train(step: int, metrics: MetricsBuffer, progress, summaries,
               learning_rate_fn: Optional[Callable[[int], float]],
               truncation: bool) -> None:
  """The console line and the train summaries of the steps since the last one."""
  metrics.drain()
  mean = metrics.mean()
  progress.update(step, loss=mean["loss"])
  scalars = dict(mean, steps_per_sec=progress.steps_per_sec)
  if learning_rate_fn is not None and "learning_rate" not in scalars:
    scalars["learning_rate"] = float(learning_rate_fn(step - 1))
  if truncation:
    scalars["truncated_examples"] = metrics.truncated_examples
    metrics.report_truncation(step)
  summaries.scalars(step, scalars, split="train")
  return scalars


class _Telemetry:
  """Prompt telemetry at every train log line (`training/telemetry.py`)."""

  def __init__(self, built: "Built", trainable: Params, frozen: Params):
    # The initial prompts as the run's seed built them (copied to the host: the
    # train step donates the state that holds them).
    self.initial = evaluation.to_host(telemetry.prompt_arrays(trainable))
    config = getattr(getattr(built.loss_fn, "model", None), "config", None)
    try:
      self.embedding = flatten(frozen).get(families.embedding_path(config))
    except (KeyError, TypeError, ValueError):  # not a known family: no prompt norms
      self.embedding = None

  def log(self, step: int, trainable: Params, scalars: Mapping[str, float],
          summaries) -> None:
    values = telemetry.prompt_stats(trainable, self.initial, self.embedding)
    values.update({k: scalars[k] for k in telemetry.GATE_KEYS if k in scalars})
    if values:
      summaries.scalars(step, {f"telemetry/{k}": v for k, v in values.items()},
                        split="train")
      summaries.record(step, telemetry.TASK, values)


def _save(step: int, state: TrainState, frozen: Params, method: Method,
          checkpointer: ckpt.StateCheckpointer, consumed: int, truncated: int,
          config: TrainConfig) -> None:
  """The orbax state and the numpy export of `step` (never a non-finite state)."""
  if not bool(_all_finite(state.trainable)):
    raise NonFiniteLossError(step, "the trainable parameters are not finite after "
                             "this step's update", config.model_dir,
                             checkpointer.latest_step())
  checkpointer.save(step, state.as_dict(), consumed,
                    data={"truncated_examples": truncated})
  arrays = _exported(method, state.trainable, frozen)
  if jax.process_index() == 0:
    ckpt.export_step(config.model_dir, step, arrays, keep=config.keep_checkpoints)


def _evaluate(step: int, state: TrainState, frozen: Params, method: Method,
              evaluator: evaluation.Evaluator, best: Optional[Dict[str, Any]],
              config: TrainConfig, summaries) -> Optional[Dict[str, Any]]:
  """Evaluates, records the results and returns the (maybe new) best record."""
  results = evaluator.evaluate(params_lib.merge(state.trainable, frozen))
  _record_evaluation(step, results, summaries)
  return _update_best(step, results, best, config,
                      lambda: _exported(method, state.trainable, frozen), summaries)


def _record_evaluation(step: int, results: Mapping[str, evaluation.TaskResult],
                       summaries) -> None:
  """metrics.jsonl, TensorBoard and a log line per evaluated task."""
  for name, result in results.items():
    summaries.record(step, name, result.metrics)
    summaries.scalars(step, {f"{name}/{k}": v for k, v in result.metrics.items()
                             if isinstance(v, (int, float))}, split="eval")
    if result.predictions:
      summaries.texts(step, {f"{name}/examples": summaries_lib.examples_markdown(
          result.inputs, result.targets, result.predictions)})
    logging.info("Eval at step %d, %s: %s", step, name,
                 {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})


def is_better(best: Optional[Mapping[str, Any]], metric: str, value: float,
              mode: str) -> bool:
  """True when `value` of `metric` beats the recorded best (a new metric always does)."""
  if best is None or best.get("metric") != metric:
    return True
  return value > best["value"] if mode == "max" else value < best["value"]


def _update_best(step: int, results: Mapping[str, evaluation.TaskResult],
                 best: Optional[Dict[str, Any]], config: TrainConfig,
                 exported: Callable[[], Dict[str, np.ndarray]],
                 summaries) -> Optional[Dict[str, Any]]:
  """The best record after this evaluation; a new best is exported to `best/`."""
  chosen = evaluation.select_metric(results, config.best_metric)
  if chosen is None:
    return best
  metric, value = chosen
  mode = config.best_mode or ("min" if metric in ("loss", "z_loss") else "max")
  if not is_better(best, metric, value, mode):
    return best
  best = {"step": step, "metric": metric, "value": value, "mode": mode}
  arrays = exported()
  if jax.process_index() == 0:
    ckpt.export_best(config.model_dir, arrays, best)
    summaries.record(step, "best", {"metric": metric, "value": value},
                     export=layout.BEST_DIR)
  logging.info("New best %s = %.4f at step %d, exported to %s/%s.", metric, value,
               step, config.model_dir, layout.BEST_DIR)
  return best


def _exported(method: Method, trainable: Params, frozen: Params) -> Dict[str, np.ndarray]:
  """`Method.exported` of the trained parameters (gathered to host numpy)."""
  host = evaluation.to_host(trainable)
  return {k: np.asarray(v)
          for k, v in method.exported(params_lib.merge(host, frozen)).items()}
