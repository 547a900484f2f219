"""From raw measurements to the reported sections, ratios and targets.

Inputs: the training group of `run_all.run_group`, `{contender: {'setup', 'reps':
[...], 'finish'}}` (ours, ours_nodrop, peft, matmul, prefix, lopa, model), and the
record `benchmarks/decoding.py` returns. Every headline number is a ratio of two
contenders measured in the same rounds (`common.ratio`: ratio of medians, spread of
the paired ratios).
"""
from __future__ import annotations

from typing import Any, Dict, List

from benchmarks import common, flops

Group = Dict[str, Dict[str, Any]]
METHODS = ("prompt", "prefix", "lopa", "model")


def _seconds(group: Group, name: str) -> List[float]:
  return [r["seconds"] for r in group[name]["reps"]]


def _train_side(shapes: common.Shapes, training: Group, name: str) -> Dict[str, Any]:
  seconds = _seconds(training, name)
  setup, finish = training[name]["setup"], training[name]["finish"]
  steady = common.summarize(seconds)["median"]
  return {
      "step_seconds": common.summarize(seconds),
      "tokens_per_second": common.summarize([shapes.tokens_per_step / s
                                             for s in seconds]),
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


def train_step(shapes: common.Shapes, training: Group) -> Dict[str, Any]:
  """Ours vs PEFT: tokens/s, memory, compile, first step; and ours without dropout."""
  out = {"tokens_per_step": shapes.tokens_per_step}
  for name in ("ours", "ours_nodrop", "peft"):
    out[name] = _train_side(shapes, training, name)
  ours, peft = out["ours"], out["peft"]
  out["ours_vs_peft"] = {
      "tokens_per_second_ratio": common.ratio(_seconds(training, "peft"),
                                              _seconds(training, "ours")),
      "peak_memory_ratio": ours["peak_mib"] / peft["peak_mib"],
      "steady_memory_ratio": ours["steady_peak_mib"] / peft["steady_peak_mib"],
  }
  nodrop = out["ours_nodrop"]
  out["nodrop_vs_ours"] = {  # > 1: how much faster / smaller without dropout masks
      "tokens_per_second_ratio": common.ratio(_seconds(training, "ours"),
                                              _seconds(training, "ours_nodrop")),
      "compile_seconds_ratio": nodrop["compile_seconds"] / ours["compile_seconds"],
      "peak_memory_ratio": nodrop["peak_mib"] / ours["peak_mib"],
  }
  return out


def limit(shapes: common.Shapes, training: Group) -> Dict[str, Any]:
  """Achieved FLOP/s of our prompt-tuning step over the measured matmul FLOP/s."""
  counted = flops.train_step_flops(shapes)
  machine = [r["flops_per_second"] for r in training["matmul"]["reps"]]
  out = {
      "step_flops": counted,
      "xla_flops": training["ours"]["finish"].get("xla_flops"),
      "matmul_flops_per_second": common.summarize(machine),
      "matmul_n": training["matmul"]["setup"]["n"],
  }
  for name in ("ours", "ours_nodrop"):
    achieved = [counted["total"] / s for s in _seconds(training, name)]
    out[name] = {"achieved_flops_per_second": common.summarize(achieved),
                 "efficiency": common.ratio(achieved, machine)}
  return out


def methods(shapes: common.Shapes, training: Group) -> Dict[str, Any]:
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


def decoding(record: Dict[str, Any]) -> Dict[str, Any]:
  """Greedy decoding and mixed batches, from `benchmarks/decoding.py`'s record."""
  results, ratios = record["results"], record["ratios"]
  pick = lambda name: {"tokens_per_second": results[name]["tokens_per_second"],
                       "seconds": results[name]["wall"]}
  return {
      "tokens_per_batch": record["shapes"]["batch"] * record["shapes"]["decode_length"],
      "threads": record["threads"],
      "ours": pick("ours_greedy"), "hf": pick("hf_generate"),
      "tokens_per_second_ratio": ratios["ours_greedy_vs_hf_generate"]["wall"],
      "cpu_time_ratio": ratios["ours_greedy_vs_hf_generate"]["cpu"],
      "token_agreement": record["checks"]["greedy_tokens_agree_with_hf"],
      "mixed": pick("ours_bank_mixed"), "single": pick("ours_single_prompt"),
      "bank_size": record["shapes"]["bank_size"],
      "mixed_vs_single_ratio": ratios["bank_mixed_vs_single_prompt"]["wall"],
      "mixed_vs_bank_one_prompt_ratio": ratios["bank_mixed_vs_bank_one_prompt"]["wall"],
      "decode_loop": record.get("decode_loop"),
      "output": "decoding.json",
  }


def sections(shapes: common.Shapes, training: Group, decoding_record: Dict[str, Any]
             ) -> Dict[str, Dict[str, Any]]:
  return {
      "train_step": train_step(shapes, training),
      "limit": limit(shapes, training),
      "methods": methods(shapes, training),
      "decoding": decoding(decoding_record),
  }


def targets(results: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The issue's targets, each with the measured ratio and whether it is met (the
  train step as the trainer runs it: dropout on, default PRNG)."""
  train, lim, dec = results["train_step"], results["limit"], results["decoding"]
  rows = [
      ("train tokens/s, ours / PEFT",
       train["ours_vs_peft"]["tokens_per_second_ratio"]["value"], ">=", 1.3),
      ("train peak memory, ours / PEFT", train["ours_vs_peft"]["peak_memory_ratio"],
       "<=", 1.0),
      ("train FLOP/s / matmul FLOP/s", lim["ours"]["efficiency"]["value"], ">=", 0.7),
      ("greedy tokens/s, ours / generate", dec["tokens_per_second_ratio"]["value"],
       ">=", 2.0),
      ("mixed-prompt / single-prompt tokens/s", dec["mixed_vs_single_ratio"]["value"],
       ">=", 0.95),
  ]
  return [{"name": name, "value": float(value), "op": op, "target": target,
           "met": bool(value >= target if op == ">=" else value <= target)}
          for name, value, op, target in rows]
