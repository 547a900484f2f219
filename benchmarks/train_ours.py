"""Our train step as a worker contender: the trainer's own compiled step, timed.

The step is exactly what `prompt_tuning.training.trainer.train` runs: `build_params` (frozen
model loaded from the shared Hugging Face directory, method parameters initialized),
`compile_steps` (the pure `train_step` jitted with shardings and the state donated)
on a mesh over this process's CPU devices, one fixed batch fed repeatedly.

Reported by `setup` (this process only):
  compile_seconds      tracing + lowering + XLA compilation of the first call
                       (from `jax.monitoring` compile events)
  first_step_seconds   wall time of the first call, compile included
  loaded_mib           RSS after loading and placing the weights, minus the
                       baseline taken right after imports
and by `finish`: `peak_mib` (whole-process peak RSS, `getrusage`, minus that
baseline) and `steady_peak_mib` (peak RSS over the timed repetitions only, after
resetting the kernel's high-water mark post-compile, minus the baseline).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from benchmarks import common, weights
from prompt_tuning import prompt_files
from prompt_tuning import params as params_lib
from prompt_tuning import building, partitioning
from prompt_tuning.training import losses, optim, trainer
from prompt_tuning.methods import baselines, lopa, prefix
from prompt_tuning.methods import prompt as prompt_lib

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def method_and_optimizer(name: str, shapes: common.Shapes, prompt_file: str):
  """The method and its paper's optimizer, all at prompt / prefix length P.

    prompt  prompt tuning, P prompt vectors, Adafactor (lr 0.3, decay 0.8, no
            parameter scaling, update clip 1.0, weight decay 1e-5, unfactored)
    prefix  prefix tuning, P prefix positions per layer, MLP reparametrization
            (hidden 512), AdamW
    lopa    LoPA, P prompt vectors, rank 4, pooled frozen-encoder features, AdamW
    model   model tuning (every weight), T5X's factored Adafactor (lr 1e-3)
  """
  p = shapes.prompt
  if name == "prompt":
    return (prompt_lib.prompt_tuning(length=p,
                                     initializer=prompt_files.from_file(prompt_file)),
            optim.adafactor_prompt_tuning())
  if name == "prefix":
    return prefix.prefix_tuning(length=p), optim.adamw_prefix_tuning()
  if name == "lopa":
    return lopa.lopa(length=p), optim.adamw_lopa()
  if name == "model":
    return baselines.model_tuning(), optim.adafactor_model_tuning()
  raise ValueError(f"Unknown method {name!r}; choose prompt, prefix, lopa or model.")


class CompileTimer:
  """Sums JAX's compile-duration events while active."""

  def __init__(self):
    self.seconds = 0.0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **kwargs):
    del kwargs
    if self.active and event in _COMPILE_EVENTS:
      self.seconds += duration


class OursTrain:
  """One method's train step (default: prompt tuning, the issue's headline case).

  `prng_impl='rbg'` runs the same trainer code with JAX's `rbg` PRNG (what
  `JAX_DEFAULT_PRNG_IMPL=rbg` does): dropout masks come from XLA's RngBitGenerator
  instead of threefry hashes computed elementwise (see docs/BENCHMARKS.md).
  """

  def __init__(self, shapes: Dict[str, Any], directory: str, method: str = "prompt",
               dropout: bool = True, cost_analysis: bool = False,
               prng_impl: Optional[str] = None):
    if prng_impl is not None:  # as JAX_DEFAULT_PRNG_IMPL=<impl>, before any key
      jax.config.update("jax_default_prng_impl", prng_impl)
    self.shapes = common.Shapes.from_dict(shapes)
    self.directory = directory
    self.method_name = method
    self.dropout = dropout
    self.cost_analysis = cost_analysis
    self.baseline_mib = common.rss_mib()
    self.compile_timer = CompileTimer()

  def setup(self) -> Dict[str, Any]:
    shapes = self.shapes
    method, optimizer = method_and_optimizer(
        self.method_name, shapes, os.path.join(self.directory, weights.PROMPT_FILE))
    mesh = partitioning.make_mesh()
    config, params, shardings = building.build_params(
        method, shapes.model_config(), os.path.join(self.directory, weights.MODEL_DIR),
        jax.random.PRNGKey(0), mesh=mesh)
    model = method.build(config)
    trainable, frozen = params_lib.split(params, method.trainable)
    trainable_shardings, frozen_shardings = params_lib.split(shardings, method.trainable)
    del params
    train_config = trainer.TrainConfig(
        model_dir="", mixture_or_task_name="benchmark",
        task_feature_lengths={"inputs": shapes.inputs, "targets": shapes.targets},
        train_steps=0, batch_size=shapes.batch, enable_dropout=self.dropout)
    loss_fn = losses.LossFn(model, train_config.z_loss,
                            train_config.loss_normalizing_factor,
                            train_config.enable_dropout)
    steps = trainer.compile_steps(loss_fn, optimizer, mesh, trainable,
                                  trainable_shardings, frozen_shardings)
    self.model, self.optimizer, self.train_config = model, optimizer, train_config
    self.state = steps.init_state(trainable)
    self.frozen = frozen
    self.train = steps.train
    self.batch = partitioning.host_batch_to_global(
        weights.batch(shapes, config.vocab_size), mesh)
    self.rng = jax.device_put(jax.random.PRNGKey(1), partitioning.replicated(mesh))
    loaded = common.rss_mib() - self.baseline_mib
    self.num_trainable = optim.num_elements(trainable)

    self.compile_timer.active = True
    start = time.perf_counter()
    self.state, metrics = self.train(self.state, self.frozen, self.batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    first = time.perf_counter() - start
    self.compile_timer.active = False
    self.first_loss = float(metrics["loss"])
    common.reset_peak_rss()
    return {"compile_seconds": self.compile_timer.seconds,
            "first_step_seconds": first,
            "loaded_mib": loaded,
            "num_trainable": self.num_trainable,
            "devices": [str(d) for d in jax.devices()],
            "baseline_mib": self.baseline_mib}

  def rep(self) -> Dict[str, Any]:
    start = time.perf_counter()
    for _ in range(self.shapes.steps):
      self.state, metrics = self.train(self.state, self.frozen, self.batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    seconds = (time.perf_counter() - start) / self.shapes.steps
    if not np.isfinite(float(metrics["loss"])):
      raise FloatingPointError(f"non-finite loss {float(metrics['loss'])}")
    return {"seconds": seconds, "loss": float(metrics["loss"])}

  def finish(self) -> Dict[str, Any]:
    out = {"peak_mib": common.lifetime_peak_rss_mib() - self.baseline_mib,
           "steady_peak_mib": common.peak_rss_mib() - self.baseline_mib,
           "first_loss": self.first_loss,
           "step": int(jax.device_get(self.state.step))}
    if self.cost_analysis:  # after the memory readings: compiling again costs memory
      out["xla_flops"] = xla_flops(self)
    return out

  # ---------------------------------------------------------------- analysis

  def lowered(self):
    """`trainer.train_step` with this run's settings, jitted (state donated) and
    lowered on one device: the program the trainer compiles, for cost analysis and
    HLO dumps (`.compile().as_text()`)."""
    config = self.train_config
    step = functools.partial(
        trainer.train_step, loss_fn=losses.LossFn(self.model, config.z_loss, config.loss_normalizing_factor, config.enable_dropout), optimizer=self.optimizer)
    return jax.jit(step, donate_argnums=(0,)).lower(self.state, self.frozen,
                                                    self.batch, self.rng)


def xla_flops(contender: OursTrain) -> float:
  """XLA's own FLOP count of the compiled step (a cross-check of `flops.py`)."""
  analysis = contender.lowered().compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))

