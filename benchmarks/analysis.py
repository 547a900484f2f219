"""From raw worker measurements to the reported sections, ratios and targets.

Input: `run_all.run_group` results, `{contender: {'setup', 'reps': [...], 'finish'}}`
for the training group (ours, peft, matmul, prefix, lopa, model) and the decoding
group (ours, bank, hf). Every headline number is a ratio of two contenders measured
in the same rounds (`common.ratio`: ratio of medians, spread of the paired ratios).
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from benchmarks import common, flops

Group = Dict[str, Dict[str, Any]]
METHODS = ("prompt", "prefix", "lopa", "model")


def _seconds(group: Group, name: str) -> List[float]:
  return [r["seconds"] for r in group[name]["reps"]]


def train_step(shapes: common.Shapes, training: Group) -> Dict[str, Any]:
  """Ours vs PEFT: tokens/s, memory, compile and first-step time."""
  tokens = shapes.tokens_per_step
  side = {}
  for name in ("ours", "peft"):
    seconds = _seconds(training, name)
    setup, finish = training[name]["setup"], training[name]["finish"]
    steady = common.summarize(seconds)["median"]
    side[name] = {
        "step_seconds": common.summarize(seconds),
        "tokens_per_second": common.summarize([tokens / s for s in seconds]),
        "compile_seconds": setup["compile_seconds"],
        "first_step_seconds": setup["first_step_seconds"],
        "first_step_over_steady": setup["first_step_seconds"] / steady,
        "peak_mib": max(finish["peak_mib"], finish["steady_peak_mib"]),
        "steady_peak_mib": finish["steady_peak_mib"],
        "loaded_mib": setup["loaded_mib"],
        "baseline_mib": setup["baseline_mib"],
        "num_trainable": setup["num_trainable"],
        "first_loss": finish["first_loss"],
    }
  ours, peft = side["ours"], side["peft"]
  return {
      "tokens_per_step": tokens,
      "ours": ours,
      "peft": peft,
      "tokens_per_second_ratio": common.ratio(_seconds(training, "peft"),
                                              _seconds(training, "ours")),
      "peak_memory_ratio": ours["peak_mib"] / peft["peak_mib"],
      "steady_memory_ratio": ours["steady_peak_mib"] / peft["steady_peak_mib"],
  }


def limit(shapes: common.Shapes, training: Group) -> Dict[str, Any]:
  """Achieved FLOP/s of our prompt-tuning step over the measured matmul FLOP/s."""
  counted = flops.train_step_flops(shapes)
  achieved = [counted["total"] / s for s in _seconds(training, "ours")]
  machine = [r["flops_per_second"] for r in training["matmul"]["reps"]]
  return {
      "step_flops": counted,
      "xla_flops": training["ours"]["finish"].get("xla_flops"),
      "achieved_flops_per_second": common.summarize(achieved),
      "matmul_flops_per_second": common.summarize(machine),
      "matmul_n": training["matmul"]["setup"]["n"],
      "efficiency": common.ratio(achieved, machine),
  }


def step_cost(shapes: common.Shapes, training: Group) -> Dict[str, Any]:
  """Step time of each method, and its ratio to model tuning's (same rounds)."""
  names = {"prompt": "ours", "prefix": "prefix", "lopa": "lopa", "model": "model"}
  model_seconds = _seconds(training, "model")
  out = {}
  for method, name in names.items():
    seconds = _seconds(training, name)
    out[method] = {
        "step_seconds": common.summarize(seconds),
        "tokens_per_second": shapes.tokens_per_step / common.summarize(seconds)["median"],
        "time_ratio_to_model_tuning": common.ratio(seconds, model_seconds),
        "num_trainable": training[name]["setup"]["num_trainable"],
        "compile_seconds": training[name]["setup"]["compile_seconds"],
        "peak_mib": max(training[name]["finish"]["peak_mib"],
                        training[name]["finish"]["steady_peak_mib"]),
    }
  return out


def _agreement(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return 0.0
  return float(np.mean(a == b))


def decoding(shapes: common.Shapes, group: Group) -> Dict[str, Any]:
  """Greedy tokens/s, ours vs transformers `generate` (PEFT prompt tuning)."""
  side = {}
  for name in ("ours", "hf"):
    side[name] = {
        "seconds": common.summarize(_seconds(group, name)),
        "tokens_per_second": common.summarize(
            [r["tokens_per_second"] for r in group[name]["reps"]]),
        "first_call_seconds": group[name]["setup"]["first_call_seconds"],
    }
  return {
      "tokens_per_batch": shapes.batch * shapes.decode_length,
      "ours": side["ours"], "hf": side["hf"],
      "tokens_per_second_ratio": common.ratio(_seconds(group, "hf"),
                                              _seconds(group, "ours")),
      "token_agreement": _agreement(group["ours"]["setup"]["tokens"],
                                    group["hf"]["setup"]["tokens"]),
  }


def mixed_batch(shapes: common.Shapes, group: Group) -> Dict[str, Any]:
  """Greedy decoding with K mixed prompts vs one prompt, same shapes."""
  return {
      "bank_size": shapes.bank_size,
      "single": {"seconds": common.summarize(_seconds(group, "ours"))},
      "mixed": {"seconds": common.summarize(_seconds(group, "bank")),
                "first_call_seconds": group["bank"]["setup"]["first_call_seconds"]},
      "tokens_per_second_ratio": common.ratio(_seconds(group, "ours"),
                                              _seconds(group, "bank")),
  }


def sections(shapes: common.Shapes, training: Group, decode: Group
             ) -> Dict[str, Dict[str, Any]]:
  return {
      "train_step": train_step(shapes, training),
      "limit": limit(shapes, training),
      "step_cost": step_cost(shapes, training),
      "decoding": decoding(shapes, decode),
      "mixed_batch": mixed_batch(shapes, decode),
  }


def targets(results: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The issue's targets, each with the measured ratio and whether it is met."""
  rows = [
      ("train tokens/s, ours / PEFT", results["train_step"]["tokens_per_second_ratio"]
       ["value"], ">=", 1.3),
      ("train peak memory, ours / PEFT", results["train_step"]["peak_memory_ratio"],
       "<=", 1.0),
      ("train FLOP/s / matmul FLOP/s", results["limit"]["efficiency"]["value"], ">=",
       0.7),
      ("greedy tokens/s, ours / generate",
       results["decoding"]["tokens_per_second_ratio"]["value"], ">=", 2.0),
      ("mixed-prompt / single-prompt tokens/s",
       results["mixed_batch"]["tokens_per_second_ratio"]["value"], ">=", 0.95),
  ]
  return [{"name": name, "value": float(value), "op": op, "target": target,
           "met": bool(value >= target if op == ">=" else value <= target)}
          for name, value, op, target in rows]
