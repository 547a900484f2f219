"""The training loop: pure steps, compiled once with shardings, and the loop itself.

Read top to bottom:
  1. TrainConfig      the run's settings (one small dataclass, bound by gin in train.py)
  2. TrainState       step + trainable parameters + optimizer state (what is saved)
  3. train_step       pure: (state, frozen, batch, rng) -> (state, metrics)
  4. compile_steps    the one place where steps are jitted with shardings
  5. train            setup → resume → loop (log, checkpoint, evaluate, export)

Gradients are taken with respect to the trainable subtree only; the frozen model is
a separate argument that is never differentiated and has no optimizer state.
Randomness is `jax.random.fold_in(rng, step)`, so a resumed run sees the same
dropout masks as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
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
from jax.sharding import Mesh, NamedSharding

from prompt_tuning.run_dir import layout
from prompt_tuning.training import evaluation, losses, optim
from prompt_tuning import host_memory, building, partitioning
from prompt_tuning.run_dir import lock as run_lock
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.run_dir import summaries as summaries_lib
from prompt_tuning import params as params_lib
from prompt_tuning.methods.base import Method
from prompt_tuning.params import flatten
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


def train_step(state: TrainState, frozen: Params, batch: Batch, rng: jax.Array, *,
               model, optimizer: optax.GradientTransformation, z_loss: float,
               loss_normalizing_factor: Any, enable_dropout: bool
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer step on the trainable parameters.

  Args:
    state: step, trainable parameters, optimizer state.
    frozen: the frozen parameters (not differentiated).
    batch: `encoder_input_tokens [B, T_in]`, `decoder_input_tokens`,
      `decoder_target_tokens`, `decoder_loss_weights [B, T_out]`.
    rng: the run's base key; this step uses `fold_in(rng, step)`.
    model: the `Transformer` (static).
    optimizer: an optax transformation over the trainable tree (static).
    z_loss, loss_normalizing_factor: see `prompt_tuning.training.losses`.
    enable_dropout: dropout in the model.

  Returns:
    (new state, metrics): `loss` (z-loss included), `z_loss`, `weight_sum`,
    `grad_norm` and, when the optimizer exposes it, `learning_rate`.
  """
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(trainable):
    logits = model.apply({"params": params_lib.merge(trainable, frozen)},
                         batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         enable_dropout=enable_dropout, rngs={"dropout": step_rng})
    loss, z, weight_sum = losses.weighted_cross_entropy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        z_loss=z_loss, loss_normalizing_factor=loss_normalizing_factor)
    return loss, {"z_loss": z, "weight_sum": weight_sum}

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
  if "truncated" in batch:  # examples cut to TASK_FEATURE_LENGTHS (data.py)
    metrics["truncated_examples"] = jnp.sum(batch["truncated"])
  lr = _learning_rate(opt_state)
  if lr is not None:
    metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
  return TrainState(state.step + 1, trainable, opt_state), metrics


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


def compile_steps(model, optimizer: optax.GradientTransformation, mesh: Mesh,
                  trainable: Params, trainable_shardings: Params,
                  frozen_shardings: Params, config: TrainConfig) -> CompiledSteps:
  """Jits `train_step` with explicit in/out shardings (state donated).

  Optimizer-state shardings are those XLA gives `optimizer.init` from the sharded
  trainable parameters (slots shaped like a parameter follow the parameter).
  """
  replicated = partitioning.replicated(mesh)
  # Ask XLA how it would shard the optimizer state; anything it leaves off the mesh
  # (scalar counters, tiny factored slots) is replicated.
  probe = jax.jit(optimizer.init, in_shardings=(trainable_shardings,))
  proposed = probe.lower(trainable).compile().output_shardings
  opt_shardings = jax.tree_util.tree_map(
      lambda s: s if isinstance(s, NamedSharding) and s.mesh == mesh else replicated,
      proposed)
  init_opt = jax.jit(optimizer.init, in_shardings=(trainable_shardings,),
                     out_shardings=opt_shardings)
  state_shardings = TrainState(step=replicated, trainable=trainable_shardings,
                               opt_state=opt_shardings)

  def init_state(params: Params) -> TrainState:
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), replicated), params,
                      init_opt(params))

  batch_sharding = partitioning.batch_sharding(mesh)
  # The module-level function with static settings: runs with the same model,
  # optimizer and shardings reuse one compiled program.
  jitted = jax.jit(_positional_train_step, static_argnums=(4, 5, 6, 7, 8),
                   in_shardings=(state_shardings, frozen_shardings, batch_sharding,
                                 replicated),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,))
  static = (model, optimizer, config.z_loss, config.loss_normalizing_factor,
            config.enable_dropout)
  compiled = []

  def train(state, frozen, batch, rng):
    out = jitted(state, frozen, batch, rng, *static)
    if not compiled:  # the first call compiled: give the compiler's memory back
      compiled.append(jax.block_until_ready(out) is not None)
      host_memory.release_freed()
    return out

  return CompiledSteps(train, init_state, state_shardings, frozen_shardings,
                       batch_sharding)


def _positional_train_step(state, frozen, batch, rng, model, optimizer, z_loss,
                           loss_normalizing_factor, enable_dropout):
  return train_step(state, frozen, batch, rng, model=model, optimizer=optimizer,
                    z_loss=z_loss, loss_normalizing_factor=loss_normalizing_factor,
                    enable_dropout=enable_dropout)


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


class NonFiniteLossError(FloatingPointError):
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


def _holding_the_run_lock(train_fn):
  """Runs `train_fn` holding MODEL_DIR's run lock (process 0; see run_dir/lock.py).

  A second run on the same MODEL_DIR fails at once with `ModelDirLockedError`; the
  lock of a run that died (kill -9, preemption) is taken over with a warning.
  """

  @functools.wraps(train_fn)
  def locked(config: TrainConfig, **kwargs) -> TrainResult:
    with run_lock.held(config.model_dir, enabled=jax.process_index() == 0):
      return train_fn(config, **kwargs)

  return locked


@_holding_the_run_lock
def train(config: TrainConfig, *, method: Method, model_config: T5Config,
          optimizer: optax.GradientTransformation,
          initial_checkpoint_path: Optional[str] = None,
          mesh: Optional[Mesh] = None,
          axis_rules: Optional[partitioning.Rules] = None,
          batches_fn: Optional[Callable[[int], Iterator[Batch]]] = None,
          learning_rate_fn: Optional[Callable[[int], float]] = None,
          decode_fn: Optional[Callable[..., Any]] = None,
          gin_config: Optional[str] = None) -> TrainResult:
  """Trains `method` on a frozen T5, resuming from `MODEL_DIR` when possible.

  Args:
    config: the run's settings.
    method: what is trained and how it enters the network.
    model_config: the frozen model's `T5Config` (`MODEL_CONFIG`).
    optimizer: optax transformation for the trainable parameters (`OPTIMIZER`).
    initial_checkpoint_path: the frozen model (None: random init, for tests).
    mesh: defaults to `partitioning.make_mesh()` over all devices.
    axis_rules: defaults to `partitioning.rules()`.
    batches_fn: `start_batch -> iterator of this host's batches`; defaults to
      `data.train_batches` for the configured task (tests inject their own).
    learning_rate_fn: step → learning rate, for summaries (optional).
    decode_fn: decoder for evaluation (`DECODE_FN`; default greedy).
    gin_config: the operative gin config, saved as `MODEL_DIR/config.gin`.

  Returns:
    A `TrainResult` with the final step, trainable parameters (host numpy) and the
    training loss per step run by this call.

  Raises:
    run_lock.ModelDirLockedError: another run is using MODEL_DIR.
    data.UnknownTaskError, data.VocabularyTooLargeError: checked before anything
      is loaded (only when the configured task feeds the run).
    NonFiniteLossError: the loss or the parameters became NaN/inf; nothing after
      the last good checkpoint was saved.
    state_checkpoints.CheckpointWriteError: a checkpoint could not be written.
  """
  host0 = jax.process_index() == 0
  if batches_fn is None:  # fail on a task typo in seconds, not after loading
    from prompt_tuning import data as data_lib  # pylint: disable=g-import-not-at-top
    data_lib.check_task(config.mixture_or_task_name, model_config.vocab_size)
  # ---------------------------------------------------------------- setup: the mesh
  mesh = mesh if mesh is not None else partitioning.make_mesh()
  axis_rules = axis_rules if axis_rules is not None else partitioning.rules()
  host_batch_size = partitioning.check_batch_size(config.batch_size, mesh)
  logging.info("Mesh %s over %d devices on %d hosts; %d examples per host and step.",
               dict(mesh.shape), mesh.size, jax.process_count(), host_batch_size)

  # ---------------------------------------------------------------- setup: MODEL_DIR
  record = run_record(config, method, model_config, initial_checkpoint_path)
  ckpt.check_or_write_run_config(config.model_dir, record, write=host0)
  if host0 and gin_config:
    (pathlib.Path(config.model_dir) / "config.gin").write_text(gin_config)

  # ---------------------------------------------------------------- setup: parameters
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  model_config, params, shardings = building.build_params(
      method, model_config, initial_checkpoint_path, init_rng, mesh=mesh,
      axis_rules=axis_rules)
  model = method.build(model_config)
  trainable, frozen = params_lib.split(params, method.trainable)
  trainable_shardings, frozen_shardings = params_lib.split(shardings, method.trainable)
  if not flatten(trainable):
    raise ValueError(f"Method {method.name!r}: no parameter matches its trainable "
                     f"regexes {list(method.trainable)}; parameters are e.g. "
                     f"{list(flatten(params))[:5]}.")
  num_trainable = sum(int(np.prod(x.shape)) for x in flatten(trainable).values())
  logging.info("Training %d parameters in %d arrays (%s); %d frozen arrays.",
               num_trainable, len(flatten(trainable)), ", ".join(flatten(trainable)),
               len(flatten(frozen)))

  # ---------------------------------------------------------------- compile
  steps = compile_steps(model, optimizer, mesh, trainable, trainable_shardings,
                        frozen_shardings, config)
  state = steps.init_state(trainable)
  rng = jax.device_put(train_rng, partitioning.replicated(mesh))

  # ---------------------------------------------------------------- resume
  checkpointer = ckpt.StateCheckpointer(config.model_dir, keep=config.keep_checkpoints)
  batches_consumed = 0
  truncated_examples = 0  # examples cut to TASK_FEATURE_LENGTHS, over the whole run
  latest = checkpointer.latest_step()
  if latest is not None:
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        state.as_dict())
    restored, batches_consumed = checkpointer.restore(latest, abstract)
    state = TrainState.from_dict(restored)
    truncated_examples = int(checkpointer.read_data(latest).get(
        "truncated_examples", 0))
    logging.info("Resumed from %s/checkpoint_%d (%d batches consumed).",
                 config.model_dir, latest, batches_consumed)
  step = int(jax.device_get(state.step))

  # ---------------------------------------------------------------- data
  if batches_fn is None:
    batches_fn = functools.partial(
        _default_batches, config=config, host_batch_size=host_batch_size)
  batches = batches_fn(batches_consumed) if step < config.train_steps else iter(())

  # ---------------------------------------------------------------- evaluation
  summaries = summaries_lib.Summaries(config.model_dir, enabled=host0)
  evaluator = None
  best = layout.read_best_record(config.model_dir)

  def evaluate(step: int, state: TrainState):
    nonlocal evaluator, best
    if evaluator is None:
      evaluator = evaluation.Evaluator(
          model, mesh, shardings, config.mixture_or_task_name,
          config.task_feature_lengths,
          batch_size=config.eval_batch_size or config.batch_size,
          split=config.eval_split, max_examples=config.max_eval_examples,
          max_decode_length=config.max_decode_length, z_loss=config.z_loss,
          use_cached=config.use_cached, decode_fn=decode_fn)
    full = params_lib.merge(state.trainable, frozen)
    results = evaluator.evaluate(full)
    for name, result in results.items():
      summaries.record(step, name, result.metrics)
      summaries.scalars(step, {f"{name}/{k}": v for k, v in result.metrics.items()
                               if isinstance(v, (int, float))}, split="eval")
      if result.predictions:
        summaries.texts(step, {f"{name}/examples": summaries_lib.examples_markdown(
            result.inputs, result.targets, result.predictions)})
      logging.info("Eval at step %d, %s: %s", step, name,
                   {k: v for k, v in result.metrics.items()
                    if isinstance(v, (int, float))})
    chosen = evaluation.select_metric(results, config.best_metric)
    if chosen is None:
      return
    metric, value = chosen
    mode = config.best_mode or ("min" if metric in ("loss", "z_loss") else "max")
    better = (best is None or best.get("metric") != metric or
              (value > best["value"] if mode == "max" else value < best["value"]))
    if better:
      best = {"step": step, "metric": metric, "value": value, "mode": mode}
      arrays = _exported(method, state.trainable, frozen)
      if host0:
        ckpt.export_best(config.model_dir, arrays, best)
        summaries.record(step, "best", {"metric": metric, "value": value},
                         export=layout.BEST_DIR)
      logging.info("New best %s = %.4f at step %d, exported to %s/%s.", metric, value,
                   step, config.model_dir, layout.BEST_DIR)

  def save(step: int, state: TrainState):
    if not bool(_all_finite(state.trainable)):  # never save NaN over a good state
      raise NonFiniteLossError(step, "the trainable parameters are not finite after "
                               "this step's update", config.model_dir,
                               checkpointer.latest_step())
    checkpointer.save(step, state.as_dict(), batches_consumed,
                      data={"truncated_examples": truncated_examples})
    arrays = _exported(method, state.trainable, frozen)
    if host0:
      ckpt.export_step(config.model_dir, step, arrays, keep=config.keep_checkpoints)

  # ---------------------------------------------------------------- the loop
  progress = summaries_lib.Progress(config.train_steps, config.log_period, step,
                                    enabled=host0)
  pending: list = []  # (step, device metrics) not fetched yet
  window: list = []  # host metrics since the last log line
  step_losses: Dict[int, float] = {}

  def drain():
    """Fetches pending metrics; stops at the first non-finite loss or gradient."""
    nonlocal truncated_examples
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
        raise NonFiniteLossError(
            s, f"the loss is {float(m['loss'])} and the gradient norm "
            f"{float(m['grad_norm'])}", config.model_dir, checkpointer.latest_step())
      step_losses[s] = float(m["loss"])
      truncated_examples += int(m.pop("truncated_examples", 0))
      window.append(m)
    pending.clear()

  truncated_logged = truncated_examples

  def report_truncation(step: int):
    """A log line when more examples were truncated (a warning the first time)."""
    nonlocal truncated_logged
    if truncated_examples > truncated_logged:
      (logging.warning if truncated_logged == 0 else logging.info)(
          "%d of %d training examples so far were longer than TASK_FEATURE_LENGTHS "
          "%s and were truncated (as seqio does); TensorBoard: truncated_examples.",
          truncated_examples, step * config.batch_size,
          dict(config.task_feature_lengths))
      truncated_logged = truncated_examples

  preemption = _Preemption()
  preempted = False
  with preemption.installed():
    while step < config.train_steps:
      try:
        batch = next(batches)
      except StopIteration:
        raise RuntimeError(f"The training data ran out after {batches_consumed} "
                           "batches; train_batches repeats forever, so a custom "
                           "batches_fn must too.") from None
      global_batch = partitioning.host_batch_to_global(batch, mesh)
      state, metrics = steps.train(state, frozen, global_batch, rng)
      step += 1
      batches_consumed += 1
      pending.append((step, metrics))

      if progress.due(step) or step == config.train_steps:
        drain()
        mean = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
        window.clear()
        progress.update(step, mean["loss"])
        scalars = dict(mean, steps_per_sec=progress.steps_per_sec)
        if learning_rate_fn is not None and "learning_rate" not in scalars:
          scalars["learning_rate"] = float(learning_rate_fn(step - 1))
        if "truncated" in batch:
          scalars["truncated_examples"] = truncated_examples
          report_truncation(step)
        summaries.scalars(step, scalars, split="train")

      preempted = preemption.reached(step)
      last = step == config.train_steps
      paused = time.time()  # checkpoints and evaluations do not count in steps/s
      save_due = _due(step, config.checkpoint_period) or last or preempted
      eval_due = _due(step, config.eval_period) or (last and config.eval_period >= 0)
      if save_due or eval_due:
        drain()  # the losses up to here are finite before anything is saved
      if save_due:
        save(step, state)
      if preempted:
        logging.warning("Stopped at step %d after a preemption signal; rerun the same "
                        "command to resume.", step)
        break
      if eval_due:
        evaluate(step, state)
      progress.exclude(time.time() - paused)

  drain()
  checkpointer.close()
  summaries.close()
  return TrainResult(step=step, trainable=evaluation.to_host(state.trainable),
                     losses=step_losses, preempted=preempted, best=best)


def _exported(method: Method, trainable: Params, frozen: Params) -> Dict[str, np.ndarray]:
  """`Method.exported` of the trained parameters (gathered to host numpy)."""
  host = evaluation.to_host(trainable)
  return {k: np.asarray(v) for k, v in method.exported(params_lib.merge(host, frozen)).items()}


def _default_batches(start_batch: int, *, config: TrainConfig,
                     host_batch_size: int) -> Iterator[Batch]:
  from prompt_tuning import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.train_batches(
      config.mixture_or_task_name, config.task_feature_lengths, host_batch_size,
      split=config.train_split, seed=config.seed, shard_index=jax.process_index(),
      num_shards=jax.process_count(), start_batch=start_batch,
      use_cached=config.use_cached, shuffle=config.shuffle)
