"""Step cost: a prompt-tuning train step next to a model-tuning train step.

Same frozen T5 1.1 shape and batch for both (default: preset 'small', B=8,
128 input tokens, 8 targets). Prompt tuning differentiates only the `[P, H]`
prompt, so XLA drops every weight-gradient matmul and the optimizer touches P·H
numbers; model tuning computes all weight gradients and updates all parameters
with Adafactor. The prompt makes the encoder input P tokens longer, so prompt
tuning is measured at several P (P=1 isolates the saved backward work), and the
longest prompt is also compared with model tuning on T + P input tokens (the same
encoder length).

Reported per contender: median wall time of a jitted train step (contenders
interleaved A, B, C, … per repetition, so load drifts of a shared machine hit all
alike) and XLA's own FLOP estimate of the compiled step (load-independent).
Ratios are prompt / model. Writes `benchmarks/results/step_cost.json`.

The baselines of issue 17 are timed alongside, each with its paper's optimizer
(`--methods`, default all; `--methods none` to skip): LoRA r=8 on query/value,
IA3, P-tuning v2 (P=20), per-layer prompts (P=20), prefix tuning with its MLP
(P=20) and BitFit-style norm-scale tuning.

  python benchmarks/step_cost.py                      # the full shape (slow on CPU)
  python benchmarks/step_cost.py --layers 2 --reps 3  # fewer layers per stack
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import params as params_lib
from prompt_tuning.training import losses, optim
from prompt_tuning.methods import deep_prompt, ia3, lora, prefix
from prompt_tuning.methods.baselines import model_tuning, partial_tuning
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models.config import preset

# name → (method, optimizer) factories of the other baselines (issue 17).
BASELINES = {
    "lora_r8": (lambda: lora.lora(rank=8), optim.adamw_lora),
    "ia3": (ia3.ia3, optim.adafactor_ia3),
    "p_tuning_v2_P20": (lambda: prefix.p_tuning_v2(length=20), optim.adamw_p_tuning_v2),
    "per_layer_prompt_P20": (lambda: deep_prompt.per_layer_prompt(length=20),
                             optim.adafactor_prompt_tuning),
    "prefix_mlp_P20": (lambda: prefix.prefix_tuning(length=20),
                       optim.adamw_prefix_tuning),
    "bitfit": (partial_tuning, optim.adamw_bitfit),
}

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def random_params(abstract, seed=0):
  """Numpy-drawn parameters (kernels ~ N(0, 1/fan_in)); no `init` compile."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return jnp.ones(leaf.shape, jnp.float32)
    values = rng.standard_normal(leaf.shape, dtype=np.float32)
    if leaf.ndim >= 2 and "embedding" not in name:
      values /= np.sqrt(leaf.shape[0])
    return jnp.asarray(values)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def build(method, optimizer, config, batch):
  """A jitted pure train step on `method`'s trainable subtree, ready to run."""
  model = method.build(config)
  enc, dec, tgt = batch
  abstract = jax.eval_shape(lambda: nn.unbox(
      model.init(jax.random.PRNGKey(0), enc[:1], dec[:1])["params"]))
  trainable, frozen = params_lib.split(random_params(abstract), method.trainable)

  # The mean token cross-entropy (every target token weighted, no z-loss).
  loss = losses.LossFn(model, z_loss=0.0, enable_dropout=False)
  features = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
              "decoder_target_tokens": tgt,
              "decoder_loss_weights": jnp.ones(tgt.shape, jnp.float32)}

  def loss_fn(trainable, frozen):
    return loss(params_lib.merge(trainable, frozen), features)[0]

  def step(trainable, frozen, opt_state):
    value, grads = jax.value_and_grad(loss_fn)(trainable, frozen)
    trainable, opt_state = optim.apply_gradients(optimizer, grads, opt_state, trainable)
    return trainable, opt_state, value

  opt_state = optimizer.init(trainable)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 2)).lower(
      trainable, frozen, opt_state).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"compiled": compiled, "state": [trainable, frozen, opt_state],
          "compile_s": compile_s, "flops": float((cost or {}).get("flops", float("nan"))),
          "trainable": optim.num_elements(trainable),
          "optimizer_state": optim.num_elements(opt_state)}


def run_once(contender) -> float:
  trainable, frozen, opt_state = contender["state"]
  start = time.perf_counter()
  trainable, opt_state, value = contender["compiled"](trainable, frozen, opt_state)
  jax.block_until_ready((trainable, opt_state, value))
  contender["state"] = [trainable, frozen, opt_state]
  return time.perf_counter() - start


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--layers", type=int, default=None,
                      help="layers per stack (default: the preset's)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--targets", type=int, default=8)
  parser.add_argument("--prompt-lengths", default="1,20,100")
  parser.add_argument("--methods", default=",".join(BASELINES),
                      help=f"comma-separated baselines among {sorted(BASELINES)}, "
                      "or 'none'")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--no-matched", action="store_true",
                      help="skip model tuning at inputs + max(P) tokens")
  parser.add_argument("--output", default=os.path.join(RESULTS, "step_cost.json"))
  args = parser.parse_args(argv)

  overrides = {"dropout_rate": 0.0}
  if args.layers:
    overrides.update(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
  config = preset(args.preset, **overrides)
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, 32000, (args.batch, args.inputs)))
  tgt = jnp.asarray(rng.integers(2, 32000, (args.batch, args.targets)))
  dec = jnp.concatenate([jnp.zeros((args.batch, 1), tgt.dtype), tgt[:, :-1]], axis=1)

  lengths = [int(p) for p in args.prompt_lengths.split(",")]
  contenders = {"model_tuning": build(model_tuning(), optim.adafactor_model_tuning(),
                                      config, (enc, dec, tgt))}
  for length in lengths:
    contenders[f"prompt_tuning_P{length}"] = build(
        prompt_tuning(length=length), optim.adafactor_prompt_tuning(), config,
        (enc, dec, tgt))
  chosen = [] if args.methods == "none" else [m for m in args.methods.split(",") if m]
  unknown = sorted(set(chosen) - set(BASELINES))
  if unknown:
    parser.error(f"unknown --methods {unknown}; choose among {sorted(BASELINES)}")
  for name in chosen:
    make_method, make_optimizer = BASELINES[name]
    contenders[name] = build(make_method(), make_optimizer(), config, (enc, dec, tgt))
  matched = f"model_tuning_T{args.inputs + max(lengths)}"
  if not args.no_matched:  # model tuning on as many encoder positions as P_max + T
    longer = jnp.asarray(rng.integers(2, 32000, (args.batch, args.inputs + max(lengths))))
    contenders[matched] = build(model_tuning(), optim.adafactor_model_tuning(), config,
                                (longer, dec, tgt))
  for contender in contenders.values():  # warm-up (first-run allocations)
    run_once(contender)
  times = {name: [] for name in contenders}
  for _ in range(args.reps):  # interleaved
    for name, contender in contenders.items():
      times[name].append(run_once(contender))

  base = contenders["model_tuning"]
  base_time = statistics.median(times["model_tuning"])
  results = {}
  for name, contender in contenders.items():
    median = statistics.median(times[name])
    results[name] = {
        "median_step_s": median, "min_step_s": min(times[name]),
        "max_step_s": max(times[name]), "compile_s": contender["compile_s"],
        "xla_flops": contender["flops"], "trainable_params": contender["trainable"],
        "optimizer_state_elements": contender["optimizer_state"],
        "time_ratio_vs_model_tuning": median / base_time,
        "flops_ratio_vs_model_tuning": contender["flops"] / base["flops"],
    }
  if matched in contenders:
    name = f"prompt_tuning_P{max(lengths)}"
    results[name]["time_ratio_vs_matched_length_model_tuning"] = (
        results[name]["median_step_s"] / results[matched]["median_step_s"])
    results[name]["flops_ratio_vs_matched_length_model_tuning"] = (
        contenders[name]["flops"] / contenders[matched]["flops"])
  record = {
      "benchmark": "step_cost",
      "shape": {"preset": args.preset, "layers_per_stack": config.num_encoder_layers,
                "layers_reduced": bool(args.layers), "batch": args.batch,
                "inputs": args.inputs, "targets": args.targets},
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "load_average": os.getloadavg(), "jax": jax.__version__,
                  "backend": jax.default_backend()},
      "reps": args.reps, "target_ratio": 0.75, "results": results,
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)

  lines = [
      f"T5 1.1 {args.preset}, {config.num_encoder_layers}+{config.num_decoder_layers} "
      f"layers, B={args.batch}, inputs {args.inputs}, targets {args.targets}; load "
      f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {args.reps} reps",
      "",
      "| contender | median step (s) | time / model tuning | XLA flops / model tuning "
      "| optimizer state |",
      "|---|---:|---:|---:|---:|",
  ]
  for name, r in results.items():
    lines.append(f"| {name} | {r['median_step_s']:.3f} | "
                 f"{r['time_ratio_vs_model_tuning']:.2f} | "
                 f"{r['flops_ratio_vs_model_tuning']:.2f} | "
                 f"{r['optimizer_state_elements']:,} |")
  if matched in contenders:
    r = results[f"prompt_tuning_P{max(lengths)}"]
    lines += ["", f"prompt_tuning_P{max(lengths)} vs {matched} (same encoder length): "
              f"time {r['time_ratio_vs_matched_length_model_tuning']:.2f}, flops "
              f"{r['flops_ratio_vs_matched_length_model_tuning']:.2f}"]
  summary = os.path.splitext(args.output)[0] + ".md"
  with open(summary, "w", encoding="utf-8") as f:
    f.write("# Step cost: parameter-efficient methods vs model tuning\n\n" +
            "\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"wrote {args.output} and {summary}")
  return record


if __name__ == "__main__":
  main(sys.argv[1:])
