r"""Plot a sweep CSV like the paper's Figures 1 and 3 (PNG, matplotlib Agg).

  python scripts/plot_sweep.py results/sweeps/tiny/results.csv \
      --output_dir docs/figures --prefix tiny_

writes, from the rows of `scripts/sweep.py collect`:
  <prefix>scaling.png        score vs model parameters (log x), one line per method,
                             error bars = std over seeds            (Figure 1)
  <prefix>prompt_length.png  prompt tuning, one line per prompt length (Figure 3a)
  <prefix>init.png           prompt tuning, one line per initializer (Figure 3b)
With a single model size the ablations plot score vs prompt length and one bar per
initializer. Plots whose rows are absent are skipped with a message.

Filters: `--where prompt_length=100 --where init=class_labels` keep rows with that
value (or none, e.g. model tuning has no prompt length) — use them to pick which
prompt-tuning configuration the scaling plot shows.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from prompt_tuning import cli
from prompt_tuning import errors
from prompt_tuning.research import collect, plots

KINDS = ("scaling", "prompt_length", "init")


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/plot_sweep.py", __doc__)
  p.add_argument("csv", help="a sweep CSV (scripts/sweep.py collect)")
  p.add_argument("--output_dir", default=".")
  p.add_argument("--prefix", default="", help="file name prefix of the PNGs")
  p.add_argument("--kinds", default=",".join(KINDS),
                 help=f"comma-separated among {KINDS}")
  p.add_argument("--value", default="best", choices=("best", "final"),
                 help="which column to plot")
  p.add_argument("--where", action="append", default=[],
                 help="COLUMN=VALUE row filter for the scaling plot (repeatable)")
  p.add_argument("--ablation_where", action="append", default=[],
                 help="COLUMN=VALUE row filter for the ablation plots (repeatable)")
  p.add_argument("--ylabel", default=None)
  p.add_argument("--title", default=None, help="title prefix")
  return p.parse_args(argv)


def _filters(values):
  out = {}
  for value in values:
    key, sep, v = value.partition("=")
    if not sep:
      raise SystemExit(f"--where {value!r}: expected COLUMN=VALUE.")
    out[key] = v
  return out


def main(argv=None):
  args = parse_args(argv)
  rows = [r for r in collect.read_csv(args.csv) if r.get("status") == "done"]
  if not rows:
    print(f"{args.csv}: no finished run to plot.", file=sys.stderr)
    return 1
  out = pathlib.Path(args.output_dir)
  title = (args.title + ": ") if args.title else ""
  written = []
  for kind in [k for k in args.kinds.split(",") if k]:
    if kind not in KINDS:
      raise SystemExit(f"--kinds: unknown plot {kind!r}; choose from {KINDS}.")
    path = out / f"{args.prefix}{kind}.png"
    try:
      if kind == "scaling":
        plots.scaling_plot(rows, str(path), value=args.value, ylabel=args.ylabel,
                           where=_filters(args.where),
                           title=f"{title}scaling with model size")
      else:
        plots.ablation_plot(rows, str(path), kind, value=args.value,
                            ylabel=args.ylabel, where=_filters(args.ablation_where),
                            title=f"{title}{kind.replace('_', ' ')} ablation")
    except ValueError as e:
      print(f"Skipped {kind}: {e}", file=sys.stderr)
      continue
    written.append(str(path))
    print(f"Wrote {path}")
  return 0 if written else 1


if __name__ == "__main__":
  sys.exit(errors.run_reporting("scripts/plot_sweep.py", main, sys.argv[1:]))
