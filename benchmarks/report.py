"""`benchmarks/results/RESULTS.md`: the sections of `analysis.py` as markdown tables."""
from __future__ import annotations

from typing import Any, Dict, List


def _ratio(r: Dict[str, Any]) -> str:
  return f"**{r['value']:.2f}×** ({r['min']:.2f}–{r['max']:.2f})"


def _stat(s: Dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
  return (f"{s['median'] * scale:.{digits}g} "
          f"(±{100 * s['spread'] / 2:.0f}%)")


def _machine(meta: Dict[str, Any]) -> List[str]:
  m = meta["machine"]
  versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
  load = meta.get("quiet_wait")
  lines = [
      f"- CPU: {m['cpu']}, {m['usable_cores']} usable cores of {m['logical_cores']}, "
      f"{m['memory_gib']} GiB; flags {' '.join(m['cpu_flags'])}",
      f"- OS: {m['os']}",
      f"- Versions: {versions}",
      f"- Commit: {m['commit']}; started {meta['started']}, took "
      f"{meta['duration_seconds'] / 60:.1f} min",
      f"- Load average (1, 5, 15 min): {meta['load_average_start']} at the start, "
      f"{meta['load_average_end']} at the end" +
      (f"; waited for < {load['waited_for']}: "
       f"{'reached' if load['quiet'] else 'not reached, ran anyway'}" if load else ""),
      f"- Command: `{meta['command']}`",
  ]
  return lines


def markdown(meta: Dict[str, Any], sections: Dict[str, Dict[str, Any]],
             targets: List[Dict[str, Any]]) -> str:
  s = meta["shapes"]
  train, lim, cost = sections["train_step"], sections["limit"], sections["step_cost"]
  dec, mixed = sections["decoding"], sections["mixed_batch"]
  out = ["# Benchmark results", ""]
  if meta["quick"]:
    out += ["**Quick run (tiny shapes): checks the machinery, the numbers mean "
            "nothing.**", ""]
  out += [
      f"T5 1.1 `{s['preset']}` shape (random weights, {meta['weights']['num_params']:,} "
      f"parameters), batch {s['batch']}, {s['inputs']} input tokens + {s['prompt']} "
      f"prompt, {s['targets']} targets; {s['reps']} interleaved repetitions of "
      f"{s['steps']} train steps (decoding: one batch of {s['decode_length']} tokens) "
      "per contender. Ratios are of medians; the range in parentheses is the lowest "
      "and highest ratio of paired repetitions. Absolute figures: median (± half the "
      "max–min range). How to read and reproduce: `docs/BENCHMARKS.md`.", "",
      "## Machine", ""] + _machine(meta) + ["", "## Targets", "",
      "| measure | value | target | |", "|---|---|---|---|"]
  for t in targets:
    out.append(f"| {t['name']} | {t['value']:.2f} | {t['op']} {t['target']} | "
               f"{'met' if t['met'] else '**missed**'} |")
  o, p = train["ours"], train["peft"]
  out += ["", "## Train step: prompt tuning, ours vs PEFT", "",
          f"Tokens/s ratio (ours / PEFT): {_ratio(train['tokens_per_second_ratio'])}. "
          f"Peak memory ratio: **{train['peak_memory_ratio']:.2f}** (steady state "
          f"{train['steady_memory_ratio']:.2f}).", "",
          "| | ours (JAX) | PEFT (PyTorch) |", "|---|---|---|",
          f"| tokens/s ({train['tokens_per_step']} per step) | "
          f"{_stat(o['tokens_per_second'])} | {_stat(p['tokens_per_second'])} |",
          f"| step time, s | {_stat(o['step_seconds'])} | {_stat(p['step_seconds'])} |",
          f"| compile time, s | {o['compile_seconds']:.1f} | none (eager) |",
          f"| first step (incl. compile), s | {o['first_step_seconds']:.1f} | "
          f"{p['first_step_seconds']:.1f} |",
          f"| first step / steady step | {o['first_step_over_steady']:.1f} | "
          f"{p['first_step_over_steady']:.1f} |",
          f"| peak RSS over baseline, MiB | {o['peak_mib']:.0f} | {p['peak_mib']:.0f} |",
          f"| steady-state peak RSS over baseline, MiB | {o['steady_peak_mib']:.0f} | "
          f"{p['steady_peak_mib']:.0f} |",
          f"| RSS after loading weights, MiB | {o['loaded_mib']:.0f} | "
          f"{p['loaded_mib']:.0f} |",
          f"| baseline RSS after imports, MiB | {o['baseline_mib']:.0f} | "
          f"{p['baseline_mib']:.0f} |",
          f"| trainable parameters | {o['num_trainable']:,} | {p['num_trainable']:,} |",
          f"| loss after step 1 | {o['first_loss']:.3f} | {p['first_loss']:.3f} |"]
  xla = lim["xla_flops"]
  out += ["", "## Distance to the limit", "",
          f"Achieved / machine: {_ratio(lim['efficiency'])} of the measured dense "
          f"float32 matmul rate ({lim['matmul_n']}² × {lim['matmul_n']}², jitted JAX).",
          "", "| | |", "|---|---|",
          f"| FLOPs per step, analytic (fwd + bwd) | {lim['step_flops']['total']:.4g} "
          f"({lim['step_flops']['forward']:.3g} + {lim['step_flops']['backward']:.3g}) |",
          f"| FLOPs per step, XLA cost analysis | "
          f"{'n/a' if xla is None else f'{xla:.4g}'} |",
          f"| achieved GFLOP/s | {_stat(lim['achieved_flops_per_second'], 1e-9)} |",
          f"| matmul GFLOP/s | {_stat(lim['matmul_flops_per_second'], 1e-9)} |"]
  out += ["", "## Step cost by method (ours, same shapes)", "",
          "| method | step time, s | tokens/s | time / model tuning | trainable "
          "| compile, s | peak RSS, MiB |", "|---|---|---|---|---|---|---|"]
  for method, row in cost.items():
    out.append(f"| {method} | {_stat(row['step_seconds'])} | "
               f"{row['tokens_per_second']:.3g} | "
               f"{_ratio(row['time_ratio_to_model_tuning'])} | "
               f"{row['num_trainable']:,} | {row['compile_seconds']:.1f} | "
               f"{row['peak_mib']:.0f} |")
  out += ["", "## Greedy decoding: ours vs transformers `generate` (PEFT prompt)", "",
          f"Tokens/s ratio: {_ratio(dec['tokens_per_second_ratio'])}; identical tokens: "
          f"{100 * dec['token_agreement']:.1f}% of {dec['tokens_per_batch']}.", "",
          "| | ours | generate |", "|---|---|---|",
          f"| tokens/s | {_stat(dec['ours']['tokens_per_second'])} | "
          f"{_stat(dec['hf']['tokens_per_second'])} |",
          f"| batch time, s | {_stat(dec['ours']['seconds'])} | "
          f"{_stat(dec['hf']['seconds'])} |",
          f"| first call (incl. compile), s | {dec['ours']['first_call_seconds']:.1f} | "
          f"{dec['hf']['first_call_seconds']:.1f} |"]
  out += ["", f"## Mixed-task batch: {mixed['bank_size']} prompts vs 1 (greedy decoding)",
          "", f"Tokens/s ratio (mixed / single): "
          f"{_ratio(mixed['tokens_per_second_ratio'])}; batch time "
          f"{_stat(mixed['mixed']['seconds'])} s mixed vs "
          f"{_stat(mixed['single']['seconds'])} s single.", ""]
  return "\n".join(out)
