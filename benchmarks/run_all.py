"""Runs every benchmark of issue 9 and writes `benchmarks/results/` (JSON + RESULTS.md).

  python benchmarks/run_all.py                 # full shapes (`make bench`)
  python benchmarks/run_all.py --quick --out /tmp/bench   # tiny shapes, seconds
  python benchmarks/run_all.py --wait-for-load 1.5 --max-wait 3600

The training group: worker processes (`benchmarks/worker.py`), all alive at once,
each compiling and running its first step alone; then the runner asks each in turn
for one timed repetition, `reps` rounds:

  ours prompt tuning (the trainer's step) | the same without dropout (what the
  dropout masks cost) | PEFT prompt tuning (PyTorch) | float32 matmul | ours prefix
  tuning | ours LoPA | ours model tuning

then `benchmarks/decoding.py` (greedy decoding vs transformers `generate`, mixed
prompt bank vs one prompt; its own interleaved workers, every core to each side).

Sections (see `analysis.py`): train step vs PEFT (tokens/s, peak memory, compile
and first-step time), distance to the limit (analytic FLOP/s over the measured
matmul FLOP/s), step cost by method (ratio to model tuning), decoding and mixed
batches. Every reported figure is a ratio of measurements taken in this run.
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
  train = "benchmarks.train_ours:OursTrain"
  return [
      ("ours", train, dict(base, cost_analysis=True)),
      ("ours_nodrop", train, dict(base, dropout=False)),
      ("peft", "benchmarks.train_peft:PeftTrain", base),
      ("matmul", "benchmarks.flops:Matmul", {"shapes": shapes.to_dict()}),
      ("prefix", train, dict(base, method="prefix")),
      ("lopa", train, dict(base, method="lopa")),
      ("model", train, dict(base, method="model")),
  ]


def run_decoding(quick: bool, reps: int, out: str) -> Dict[str, Any]:
  """`benchmarks/decoding.py` (the decoding engineer's), every core to each side."""
  from benchmarks import decoding  # pylint: disable=g-import-not-at-top
  argv = ["--threads", "all", "--reps", str(reps),
          "--output", os.path.join(out, "decoding.json")]
  return decoding.main(argv + (["--quick"] if quick else []))


def run_group(specs: List[Spec], reps: int, log: Callable[[str], None],
              parallel_setup: bool = False) -> Dict[str, Dict[str, Any]]:
  """Starts every worker, sets each up alone, then interleaves `reps` rounds.

  `parallel_setup` compiles all contenders at once (quick runs: their compile
  times then mean nothing, but a loaded machine gives the group more CPU).
  """
  workers = {name: Worker(target, kwargs, name) for name, target, kwargs in specs}
  try:
    out = {name: {"target": target, "kwargs": kwargs, "reps": []}
           for name, target, kwargs in specs}
    for name, worker in workers.items():
      out[name]["import_seconds"] = worker.request("ready")["import_seconds"]
    if parallel_setup:
      for worker in workers.values():
        worker.send("setup")
    for name, worker in workers.items():
      start = time.perf_counter()
      out[name]["setup"] = (worker.receive("setup") if parallel_setup
                            else worker.request("setup"))
      out[name]["setup"]["load_average"] = common.load_average()
      log(f"  {name}: set up in {time.perf_counter() - start:.1f}s")
    names = list(workers)
    for r in range(reps):
      # Rotate the order so no contender always runs right after the same one.
      for name in names[r % len(names):] + names[:r % len(names)]:
        answer = workers[name].request("rep")
        answer["load_average"] = common.load_average()
        out[name]["reps"].append(answer)
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
    meta["quiet_wait"]["waited_seconds"] = time.time() - started
    started = time.time()  # the run's duration excludes the wait
  meta["load_average_start"] = common.load_average()

  os.makedirs(args.out, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="pt-bench-") as directory:
    log(f"Writing the shared weights ({shapes.preset}) to {directory}.")
    with Worker("benchmarks.weights:Prepare",
                {"shapes": shapes.to_dict(), "directory": directory}) as prepare:
      meta["weights"] = prepare.request("setup")
      prepare.request("finish")
    log("Training group:")
    training = run_group(training_specs(shapes, directory), shapes.reps, log,
                         parallel_setup=args.quick)
  log("Decoding (benchmarks/decoding.py):")
  decoding = run_decoding(args.quick, shapes.reps, args.out)

  meta["load_average_end"] = common.load_average()
  meta["duration_seconds"] = time.time() - started
  sections = analysis.sections(shapes, training, decoding)
  for name in ("train_step", "limit", "methods"):
    _write_json(os.path.join(args.out, f"{name}.json"), {"meta": meta,
                                                          name: sections[name]})
  summary = {"meta": meta, "targets": analysis.targets(sections),
             "decoding": sections["decoding"]}
  _write_json(os.path.join(args.out, "summary.json"), summary)
  _write_json(os.path.join(args.out, "raw.json"), {"meta": meta, "training": training})
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
