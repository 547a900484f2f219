r"""Run a grid of training runs described in one YAML/JSON file, and collect a CSV.

  python scripts/sweep.py list     scripts/sweeps/tiny_ablations.yaml
  python scripts/sweep.py run      scripts/sweeps/tiny_ablations.yaml   # one by one
  python scripts/sweep.py commands scripts/sweeps/tiny_ablations.yaml > jobs.txt
  python scripts/sweep.py collect  scripts/sweeps/tiny_ablations.yaml   # -> CSV

`run` trains every unfinished run locally, one after another, then collects;
finished runs (final checkpoint present) are skipped, interrupted ones resume from
their last checkpoint. `commands` prints one `python -m prompt_tuning.train …` line
per unfinished run, for a cluster scheduler (e.g. one array-job task per line), and
`collect` gathers every run's best metric into `<output_dir>/results.csv` (columns in
prompt_tuning/research/collect.py). The file format is documented in
prompt_tuning/research/sweep.py and docs/RESEARCH.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import collect as collect_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import sweep as sweep_lib  # pylint: disable=g-import-not-at-top

RESULTS_CSV = "results.csv"


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/sweep.py", __doc__)
  p.add_argument("action", choices=("list", "run", "commands", "collect"))
  p.add_argument("config", help="the sweep file (.yaml, .yml or .json)")
  p.add_argument("--output_dir", default=None,
                 help="overrides the file's output_dir")
  p.add_argument("--only", default=None,
                 help="a substring: only runs whose name contains it")
  p.add_argument("--subprocess", action="store_true",
                 help="run: one child `python -m prompt_tuning.train` per run (log in "
                      "<output_dir>/logs/) instead of calling the entry in-process")
  p.add_argument("--python", default="python",
                 help="commands: the interpreter written in each command line")
  p.add_argument("--csv", default=None,
                 help=f"collect/run: where to write the CSV (default "
                      f"<output_dir>/{RESULTS_CSV})")
  return p.parse_args(argv)


def _selected(sweep, only):
  return [r for r in sweep.runs if not only or only in r.name]


def list_runs(sweep, runs) -> None:
  for run in runs:
    steps = sweep.train_steps(run)
    print(f"{sweep.status(run, steps):8s} {run.name}")


def print_commands(sweep, runs, python: str) -> int:
  """One command per unfinished run; returns how many."""
  count = 0
  for run in runs:
    if sweep.status(run, sweep.train_steps(run)) != "done":
      print(run.run.command(python))
      count += 1
  print(f"# {count} of {len(runs)} runs to do", file=sys.stderr)
  return count


def run_locally(sweep, runs, subprocess: bool) -> None:
  from prompt_tuning.research import runs as runs_lib  # pylint: disable=g-import-not-at-top
  todo = [r for r in runs if sweep.status(r, sweep.train_steps(r)) != "done"]
  print(f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to "
        "run.", flush=True)
  start = time.time()
  for i, run in enumerate(todo, 1):
    print(f"[{i}/{len(todo)}] {run.name} ({time.time() - start:.0f}s)\n  "
          f"{run.run.command()}", flush=True)
    if subprocess:
      log = sweep.output_dir / "logs" / (run.name.replace("/", "__") + ".log")
      status = run.run.run_subprocess(str(log))
      if status:
        print(f"  FAILED (exit status {status}); see {log}", flush=True)
    else:
      runs_lib.run_all([run.run])


def write_results(sweep, csv_path=None) -> str:
  rows = collect_lib.collect(sweep)
  path = csv_path or sweep.output_dir / RESULTS_CSV
  collect_lib.write_csv(rows, str(path), collect_lib.columns(sweep.extra_axes))
  done = sum(r["status"] == "done" for r in rows)
  print(f"Wrote {path}: {len(rows)} runs ({done} done).", flush=True)
  return str(path)


def main(argv=None) -> int:
  args = parse_args(argv)
  sweep = sweep_lib.load(args.config, args.output_dir)
  runs = _selected(sweep, args.only)
  if not runs:
    print(f"No run matches --only={args.only!r}.", file=sys.stderr)
    return 1
  if args.action == "list":
    list_runs(sweep, runs)
  elif args.action == "commands":
    print_commands(sweep, runs, args.python)
  elif args.action == "run":
    run_locally(sweep, runs, args.subprocess)
    write_results(sweep, args.csv)
  else:
    write_results(sweep, args.csv)
  return 0


if __name__ == "__main__":
  sys.exit(errors.run_reporting("scripts/sweep.py", main, sys.argv[1:]))
