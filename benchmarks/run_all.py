"""Runs every benchmark of issue 9 and writes `benchmarks/results/` (JSON + RESULTS.md).

  python benchmarks/run_all.py                 # full shapes (`make bench`)
  python benchmarks/run_all.py --quick --out /tmp/bench   # tiny shapes, seconds
  python benchmarks/run_all.py --wait-for-load 1.5 --max-wait 3600

Two groups of worker processes (`benchmarks/worker.py`), all alive at once; each
worker compiles and runs its first step alone, then the runner asks each worker in
turn for one timed repetition, `reps` rounds:

  training   ours prompt tuning | PEFT prompt tuning | float32 matmul |
             ours prefix tuning | ours LoPA | ours model tuning
  decoding   ours greedy, one prompt | ours greedy, mixed prompt bank |
             PEFT + transformers `generate`

From these come the sections (see `analysis.py`): train step vs PEFT (tokens/s,
peak memory, compile and first-step time), distance to the limit (analytic FLOP/s
over the measured matmul FLOP/s), step cost by method (ratio to model tuning),
greedy decoding vs `generate`, mixed-task batches vs one prompt. Every reported
figure is a ratio of measurements taken in this run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import analysis, common, report  # pylint: disable=g-import-not-at-top
from benchmarks.worker import Worker  # pylint: disable=g-import-not-at-top

DEFAULT_OUT = os.path.join(common.REPO, "benchmarks", "results")
Spec = Tuple[str, str, Dict[str, Any]]  # (name, "module:Class", kwargs)


def training_specs(shapes: common.Shapes, directory: str) -> List[Spec]:
  base = {"shapes": shapes.to_dict(), "directory": directory}
  return [
      ("ours", "benchmarks.train_ours:OursTrain", dict(base, cost_analysis=True)),
      ("peft", "benchmarks.train_peft:PeftTrain", base),
      ("matmul", "benchmarks.flops:Matmul", {"shapes": shapes.to_dict()}),
      ("prefix", "benchmarks.train_ours:OursTrain", dict(base, method="prefix")),
      ("lopa", "benchmarks.train_ours:OursTrain", dict(base, method="lopa")),
      ("model", "benchmarks.train_ours:OursTrain", dict(base, method="model")),
  ]


def decoding_specs(shapes: common.Shapes, directory: str) -> List[Spec]:
  base = {"shapes": shapes.to_dict(), "directory": directory}
  return [
      ("ours", "benchmarks.decode_ours:OursDecode", dict(base, mode="prompt")),
      ("bank", "benchmarks.decode_ours:OursDecode", dict(base, mode="bank")),
      ("hf", "benchmarks.decode_hf:HfDecode", base),
  ]


def run_group(specs: List[Spec], reps: int, log: Callable[[str], None]
              ) -> Dict[str, Dict[str, Any]]:
  """Starts every worker, sets each up alone, then interleaves `reps` rounds."""
  workers = {name: Worker(target, kwargs, name) for name, target, kwargs in specs}
  try:
    out = {name: {"target": target, "kwargs": kwargs, "reps": []}
           for name, target, kwargs in specs}
    for name, worker in workers.items():
      out[name]["import_seconds"] = worker.request("ready")["import_seconds"]
    for name, worker in workers.items():
      start = time.perf_counter()
      out[name]["setup"] = worker.request("setup")
      out[name]["setup"]["load_average"] = common.load_average()
      log(f"  {name}: set up in {time.perf_counter() - start:.1f}s")
    names = list(workers)
    for r in range(reps):
      # Rotate the order so no contender always runs right after the same one.
      for name in names[r % len(names):] + names[:r % len(names)]:
        out[name]["reps"].append(workers[name].request("rep"))
      log(f"  round {r + 1}/{reps}: " + ", ".join(
          f"{n} {out[n]['reps'][-1]['seconds']:.3g}s" for n in names) +
          f" (load {common.load_average()})")
    for name, worker in workers.items():
      out[name]["finish"] = worker.request("finish")
    return out
  finally:
    for worker in workers.values():
      worker.close()


def wait_for_quiet(threshold: float, max_wait: float, log: Callable[[str], None]):
  """Polls the 1-minute load average until it is below `threshold` (or time out)."""
  deadline = time.time() + max_wait
  while True:
    load = common.load_average()
    if not load or load[0] < threshold:
      return {"waited_for": threshold, "load": load, "quiet": True}
    if time.time() >= deadline:
      log(f"Load {load} never fell below {threshold}; running anyway.")
      return {"waited_for": threshold, "load": load, "quiet": False}
    time.sleep(30)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes (structure checks only, not numbers)")
  parser.add_argument("--out", default=DEFAULT_OUT, help="results directory")
  parser.add_argument("--reps", type=int, help="timed repetitions per contender")
  parser.add_argument("--steps", type=int, help="train steps per repetition")
  parser.add_argument("--wait-for-load", type=float, default=0.0,
                      help="wait until the 1-minute load average is below this")
  parser.add_argument("--max-wait", type=float, default=3600.0,
                      help="seconds to wait for a quiet machine before running anyway")
  args = parser.parse_args(argv)

  shapes = common.QUICK if args.quick else common.FULL
  shapes = dataclasses.replace(
      shapes, **{k: v for k, v in (("reps", args.reps), ("steps", args.steps))
                 if v is not None})
  log = lambda message: print(message, file=sys.stderr, flush=True)
  started = time.time()
  meta = {
      "command": common.command_line(),
      "quick": args.quick,
      "shapes": shapes.to_dict(),
      "machine": common.machine(),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  if args.wait_for_load > 0:
    meta["quiet_wait"] = wait_for_quiet(args.wait_for_load, args.max_wait, log)
  meta["load_average_start"] = common.load_average()

  with tempfile.TemporaryDirectory(prefix="pt-bench-") as directory:
    log(f"Writing the shared weights ({shapes.preset}) to {directory}.")
    with Worker("benchmarks.weights:Prepare",
                {"shapes": shapes.to_dict(), "directory": directory}) as prepare:
      meta["weights"] = prepare.request("setup")
      prepare.request("finish")
    log("Training group:")
    training = run_group(training_specs(shapes, directory), shapes.reps, log)
    log("Decoding group:")
    decoding = run_group(decoding_specs(shapes, directory), shapes.reps, log)

  meta["load_average_end"] = common.load_average()
  meta["duration_seconds"] = time.time() - started
  sections = analysis.sections(shapes, training, decoding)
  os.makedirs(args.out, exist_ok=True)
  for name, section in sections.items():
    _write_json(os.path.join(args.out, f"{name}.json"), {"meta": meta, name: section})
  summary = {"meta": meta, "targets": analysis.targets(sections)}
  _write_json(os.path.join(args.out, "summary.json"), summary)
  _write_json(os.path.join(args.out, "raw.json"),
              {"meta": meta, "training": training, "decoding": decoding})
  with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
    f.write(report.markdown(meta, sections, summary["targets"]))
  log(f"Done in {meta['duration_seconds'] / 60:.1f} min; results in {args.out}.")
  for target in summary["targets"]:
    log(f"  {target['name']}: {target['value']:.3g} (target {target['op']} "
        f"{target['target']}) {'met' if target['met'] else 'MISSED'}")
  return 0


def _write_json(path: str, payload: Dict[str, Any]):
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, sort_keys=False)
    f.write("\n")


if __name__ == "__main__":
  sys.exit(main())
