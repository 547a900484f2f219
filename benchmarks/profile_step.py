"""Where the prompt-tuning train step's time goes (a diagnostic, not part of `make bench`).

  python benchmarks/profile_step.py [--quick] [--reps 5] [--prng rbg] [--hlo DIR]

Times, interleaved in one process on the same weights and batch:
  step          the trainer's `train_step` (jitted, state donated), dropout on
  step_nodrop   the same without dropout (what the dropout masks cost)
  forward       the loss alone (no gradient), dropout on
  matmuls       every `dot_general` the step traces (forward and backward), each
                jitted alone at its own shapes and timed, times its count: the step's
                time if everything but the matmuls were free
  matmul_2048   the dense `[2048, 2048]²` rate `run_all.py` measures the machine with

and prints each as a ratio of `step`, plus XLA's memory analysis (temp buffers) of
each compiled program. `--hlo DIR` writes the optimized HLO of the step
(`jax.jit(...).lower(...).compile().as_text()`) for reading fusions; `--trace DIR`
records two steps with `jax.profiler.trace` and prints the time per kind of XLA
operation (`ynn_fusion` are the matmuls, YNNPACK; the op names map to the HLO's
fusions, whose `metadata` names the model code that produced them).
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import statistics
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp

from benchmarks import common, flops, weights  # pylint: disable=g-import-not-at-top
from prompt_tuning import params as params_lib
from prompt_tuning.training import losses, optim, trainer
from prompt_tuning.methods import prompt as prompt_lib


def dot_shapes(jaxpr, counter=None) -> collections.Counter:
  """(lhs aval, rhs aval, dimension_numbers) → count, over a jaxpr and sub-jaxprs."""
  counter = collections.Counter() if counter is None else counter
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
      counter[(lhs.shape, rhs.shape, str(lhs.dtype),
               eqn.params["dimension_numbers"])] += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          dot_shapes(sub.jaxpr, counter)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          dot_shapes(sub, counter)
  return counter


def _timed(fn, reps: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_seconds(counter: collections.Counter, reps: int = 3) -> float:
  """Sum over the traced dots of count × (median time of that dot alone)."""
  total = 0.0
  key = jax.random.PRNGKey(0)
  for (lhs, rhs, dtype, dims), count in counter.items():
    a = jax.random.normal(key, lhs, dtype)
    b = jax.random.normal(key, rhs, dtype)
    dot = jax.jit(functools.partial(jax.lax.dot_general, dimension_numbers=dims))
    total += count * _timed(lambda: dot(a, b).block_until_ready(), reps)
  return total


def op_breakdown(trace_dir: str, top: int = 15):
  """Time per kind of XLA operation (numbered suffix dropped) in a profiler trace."""
  files = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                    recursive=True)
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  skip = ("ThunkExecutor", "SlinkyThreadPool", "$", "end: ")
  time_by_kind = collections.Counter()
  for e in events:
    thread = threads.get((e.get("pid"), e.get("tid")), "")
    if e.get("ph") != "X" or thread.startswith("python") or e["name"].startswith(skip):
      continue
    time_by_kind[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0)
  total = sum(time_by_kind.values())
  print(f"XLA op time over {trace_dir} (all threads): {total / 1e6:.2f} s")
  for kind, micros in time_by_kind.most_common(top):
    print(f"  {100 * micros / total:5.1f}%  {kind}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--prng", default=None, help="JAX PRNG impl (e.g. rbg)")
  parser.add_argument("--hlo", default=None, help="write the step's optimized HLO here")
  parser.add_argument("--trace", default=None, help="profile two steps into this dir")
  args = parser.parse_args(argv)
  if args.prng:
    jax.config.update("jax_default_prng_impl", args.prng)
  shapes = common.QUICK if args.quick else common.FULL
  config = shapes.model_config()
  method = prompt_lib.prompt_tuning(length=shapes.prompt)
  model = method.build(config)
  params = jax.jit(lambda rng: nn.unbox(model.init(
      rng, jnp.ones((1, 8), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"]))(
          jax.random.PRNGKey(0))
  trainable, frozen = params_lib.split(params, method.trainable)
  optimizer = optim.adafactor_prompt_tuning()
  batch = {k: jnp.asarray(v) for k, v in weights.batch(shapes, config.vocab_size).items()}
  rng = jax.random.PRNGKey(1)

  def make_step(dropout):
    return jax.jit(functools.partial(
        trainer.train_step, loss_fn=losses.LossFn(model, 1e-4, losses.NUM_REAL_TARGET_TOKENS, dropout), optimizer=optimizer), donate_argnums=(0,))

  copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # donation deletes inputs
  states = {d: trainer.TrainState(jnp.zeros((), jnp.int32), copy(trainable),
                                  optimizer.init(trainable)) for d in (True, False)}
  steps = {d: make_step(d) for d in (True, False)}

  @jax.jit
  def forward(trainable, frozen, batch, rng):
    return losses.LossFn(model)(params_lib.merge(trainable, frozen), batch, rng)[0]

  for dropout in (True, False):
    lowered = steps[dropout].lower(states[dropout], frozen, batch, rng)
    start = time.perf_counter()
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    print(f"step dropout={dropout}: compile {time.perf_counter() - start:.1f}s, "
          f"temp {memory.temp_size_in_bytes / 2**20:.0f} MiB, "
          f"arguments {memory.argument_size_in_bytes / 2**20:.0f} MiB")
    if dropout and args.hlo:
      os.makedirs(args.hlo, exist_ok=True)
      with open(os.path.join(args.hlo, "train_step.hlo.txt"), "w") as f:
        f.write(compiled.as_text())

  def run_step(dropout):
    states[dropout], metrics = steps[dropout](states[dropout], frozen, batch, rng)
    jax.block_until_ready((states[dropout], metrics))

  if args.trace:
    run_step(True)
    with jax.profiler.trace(args.trace, create_perfetto_trace=True):
      run_step(True)
      run_step(True)
    op_breakdown(args.trace)

  traced = jax.make_jaxpr(functools.partial(
      trainer.train_step, loss_fn=losses.LossFn(model, 1e-4, losses.NUM_REAL_TARGET_TOKENS, True), optimizer=optimizer))(
          states[True], frozen, batch, rng)
  counter = dot_shapes(traced.jaxpr)
  n = shapes.matmul
  a = jnp.ones((n, n), jnp.float32) / n
  big = jax.jit(lambda x: x @ x)
  contenders = {
      "step": lambda: run_step(True),
      "step_nodrop": lambda: run_step(False),
      "forward": lambda: forward(trainable, frozen, batch, rng).block_until_ready(),
      "matmuls": lambda: matmul_seconds(counter, reps=1),
      "matmul_2048": lambda: big(a).block_until_ready(),
  }
  for fn in contenders.values():
    fn()  # compile everything before timing
  seconds = {name: [] for name in contenders}
  for _ in range(args.reps):
    for name, fn in contenders.items():
      start = time.perf_counter()
      out = fn()
      elapsed = time.perf_counter() - start
      seconds[name].append(out if name == "matmuls" else elapsed)
  median = {k: statistics.median(v) for k, v in seconds.items()}
  counted = flops.train_step_flops(shapes)["total"]
  print(f"load average {common.load_average()}; {len(counter)} distinct dot shapes, "
        f"{sum(counter.values())} dots")
  for name, value in median.items():
    print(f"  {name:12s} {value:8.4f} s   {value / median['step']:.3f} of the step")
  rate = 2.0 * n**3 / median["matmul_2048"]
  print(f"  step FLOP/s {counted / median['step'] / 1e9:.1f} G = "
        f"{counted / median['step'] / rate:.2f} of the {n}² matmul rate "
        f"({rate / 1e9:.1f} G); the step's own matmuls alone run at "
        f"{counted / median['matmuls'] / rate:.2f} of it")
  return 0


if __name__ == "__main__":
  sys.exit(main())
