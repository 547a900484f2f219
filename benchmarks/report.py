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
      (f"; waited {load.get('waited_seconds', 0) / 60:.0f} min for < "
       f"{load['waited_for']}: {'reached' if load['quiet'] else 'not reached, ran anyway'}"
       if load else ""),
      f"- Command: `{meta['command']}`",
  ]
  return lines


def _train_table(train: Dict[str, Any]) -> List[str]:
  sides = [train["ours"], train["peft"], train["ours_nodrop"]]
  row = lambda label, fn: f"| {label} | " + " | ".join(fn(x) for x in sides) + " |"
  return [
      "| | ours (JAX) | PEFT (PyTorch) | ours, dropout off (diagnostic) |",
      "|---|---|---|---|",
      row(f"tokens/s ({train['tokens_per_step']} per step)",
          lambda x: _stat(x["tokens_per_second"])),
      row("step time, s", lambda x: _stat(x["step_seconds"])),
      row("compile time, s", lambda x: f"{x['compile_seconds']:.1f}"
          if x["compile_seconds"] else "none (eager)"),
      row("first step (incl. compile), s", lambda x: f"{x['first_step_seconds']:.1f}"),
      row("first step / steady step", lambda x: f"{x['first_step_over_steady']:.1f}"),
      row("peak RSS over baseline, MiB", lambda x: f"{x['peak_mib']:.0f}"),
      row("steady-state peak RSS over baseline, MiB",
          lambda x: f"{x['steady_peak_mib']:.0f}"),
      row("RSS after loading weights, MiB", lambda x: f"{x['loaded_mib']:.0f}"),
      row("baseline RSS after imports, MiB", lambda x: f"{x['baseline_mib']:.0f}"),
      row("trainable parameters", lambda x: f"{x['num_trainable']:,}"),
      row("loss after step 1", lambda x: f"{x['first_loss']:.3f}"),
  ]


def markdown(meta: Dict[str, Any], sections: Dict[str, Dict[str, Any]],
             targets: List[Dict[str, Any]]) -> str:
  s = meta["shapes"]
  train, lim, cost = sections["train_step"], sections["limit"], sections["methods"]
  dec = sections["decoding"]
  out = ["# Benchmark results", ""]
  if meta["quick"]:
    out += ["**Quick run (tiny shapes): checks the machinery, the numbers mean "
            "nothing.**", ""]
  out += [
      f"T5 1.1 `{s['preset']}` shape (random weights, {meta['weights']['num_params']:,} "
      f"parameters), batch {s['batch']}, {s['inputs']} input tokens + {s['prompt']} "
      f"prompt, {s['targets']} targets; {s['reps']} interleaved repetitions of "
      f"{s['steps']} train steps per contender. Ratios are of medians; the range in "
      "parentheses is the lowest and highest ratio of paired repetitions. Absolute "
      "figures (context only): median (± half the max–min range). How to read and "
      "reproduce: `docs/BENCHMARKS.md`.", "",
      "## Machine", ""] + _machine(meta) + ["", "## Targets", "",
      "| measure | value | target | |", "|---|---|---|---|"]
  for t in targets:
    out.append(f"| {t['name']} | {t['value']:.2f} | {t['op']} {t['target']} | "
               f"{'met' if t['met'] else '**missed**'} |")
  vs, nodrop = train["ours_vs_peft"], train["nodrop_vs_ours"]
  out += ["", "## Train step: prompt tuning, ours vs PEFT", "",
          f"Tokens/s, ours / PEFT: {_ratio(vs['tokens_per_second_ratio'])}. Peak "
          f"memory, ours / PEFT: **{vs['peak_memory_ratio']:.2f}** (steady state "
          f"{vs['steady_memory_ratio']:.2f}). Both train with dropout 0.1. The last "
          "column is ours with `TrainConfig.enable_dropout=False`, to show what the "
          f"dropout masks cost: {_ratio(nodrop['tokens_per_second_ratio'])} tokens/s, "
          f"{nodrop['compile_seconds_ratio']:.2f}× the compile time and "
          f"{nodrop['peak_memory_ratio']:.2f}× the peak memory of ours with dropout.",
          ""]
  out += _train_table(train)
  xla = lim["xla_flops"]
  out += ["", "## Distance to the limit", "",
          f"Achieved FLOP/s over the measured dense float32 matmul rate "
          f"({lim['matmul_n']}² · {lim['matmul_n']}², jitted JAX): "
          f"{_ratio(lim['ours']['efficiency'])} (dropout off: "
          f"{_ratio(lim['ours_nodrop']['efficiency'])}).",
          "", "| | |", "|---|---|",
          f"| FLOPs per step, analytic (fwd + bwd) | {lim['step_flops']['total']:.4g} "
          f"({lim['step_flops']['forward']:.3g} + {lim['step_flops']['backward']:.3g}) |",
          f"| FLOPs per step, XLA cost analysis | "
          f"{'n/a' if xla is None else f'{xla:.4g}'} |",
          f"| achieved GFLOP/s | "
          f"{_stat(lim['ours']['achieved_flops_per_second'], 1e-9)} |",
          f"| achieved GFLOP/s, dropout off | "
          f"{_stat(lim['ours_nodrop']['achieved_flops_per_second'], 1e-9)} |",
          f"| matmul GFLOP/s | {_stat(lim['matmul_flops_per_second'], 1e-9)} |"]
  out += ["", "## Step cost by method (ours, the trainer's step, same shapes)", "",
          "| method | step time, s | tokens/s | time / model tuning | trainable "
          "| compile, s | peak RSS, MiB |", "|---|---|---|---|---|---|---|"]
  for method, row in cost.items():
    out.append(f"| {method} | {_stat(row['step_seconds'])} | "
               f"{row['tokens_per_second']:.3g} | "
               f"{_ratio(row['time_ratio_to_model_tuning'])} | "
               f"{row['num_trainable']:,} | {row['compile_seconds']:.1f} | "
               f"{row['peak_mib']:.0f} |")
  threads = dec["threads"]
  out += ["", "## Greedy decoding and mixed-task batches (`benchmarks/decoding.py`)", "",
          f"Threads: {threads['setting']} (PyTorch {threads['torch']}). Greedy tokens/s, "
          f"ours / transformers `generate`: {_ratio(dec['tokens_per_second_ratio'])} "
          f"(CPU time: {_ratio(dec['cpu_time_ratio'])}); identical tokens: "
          f"{100 * dec['token_agreement']:.1f}%. A batch mixing {dec['bank_size']} "
          f"prompts of a bank / one prompt-tuning prompt: "
          f"{_ratio(dec['mixed_vs_single_ratio'])} (the bank all on one prompt: "
          f"{_ratio(dec['mixed_vs_bank_one_prompt_ratio'])}).", "",
          "| | tokens/s | batch time, s |", "|---|---|---|"]
  for label, key in (("ours greedy", "ours"), ("transformers generate", "hf"),
                     ("ours, one prompt", "single"), ("ours, mixed bank", "mixed")):
    out.append(f"| {label} | {dec[key]['tokens_per_second']:.3g} | "
               f"{_stat(dec[key]['seconds'])} |")
  loop = dec.get("decode_loop")
  if loop:
    out += ["", "Where a greedy batch's time goes (encoders timed alone; the rest is "
            "the per-token loop, whose floor is the bytes a step reads over the "
            "measured memory read rate):", "",
            "| | ours | transformers |", "|---|---|---|",
            f"| encoder, s | {loop['ours_encoder_s']:.3f} | {loop['hf_encoder_s']:.3f} |",
            f"| per decoded token, ms | {loop['ours_step_ms']:.1f} | "
            f"{loop['hf_step_ms']:.1f} |",
            f"| floor per token, ms ({loop['bytes_per_step'] / 2**20:.0f} MiB at "
            f"{loop['read_gb_per_s']:.1f} GB/s) | {loop['floor_step_ms']:.1f} | "
            f"{loop['floor_step_ms']:.1f} |",
            "",
            f"Loop alone, ours / transformers: **{loop['loop_ratio']:.2f}×**. With our "
            f"encoder and a loop at the floor, the ratio could reach at most "
            f"**{loop['ratio_if_loop_at_floor']:.2f}×**."]
  out += ["", f"Full record: `{dec['output']}`.", ""]
  return "\n".join(out)
