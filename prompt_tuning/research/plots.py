"""Plots from a sweep CSV (`collect.COLUMNS`), in the style of the paper's figures.

  scaling_plot   Figure 1: score vs model parameters (log x), one line per method,
                 error bars = standard deviation over seeds
  ablation_plot  Figure 3: one line per prompt length or per initializer vs model
                 parameters; with a single model size, score vs prompt length (log
                 x) or one bar per initializer instead

Rows are filtered with `where={'column': 'value'}` (a row without a value in that
column, e.g. model tuning's prompt_length, is kept). matplotlib runs headless (Agg).
"""
from __future__ import annotations

import pathlib
import textwrap
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.research import collect

METHOD_LABELS = {"prompt_tuning": "Prompt Tuning", "model_tuning": "Model Tuning",
                 "prompt_design": "Prompt Design", "prefix_tuning": "Prefix Tuning",
                 "lopa": "LoPA"}
INIT_LABELS = {"class_labels": "Class Label", "sampled_vocab": "Sampled Vocab",
               "random_uniform": "Random Uniform", "from_text": "Text",
               "from_file": "File"}
METHOD_ORDER = ("model_tuning", "prompt_tuning", "lopa", "prefix_tuning",
                "prompt_design")


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def filter_rows(rows: Iterable[Mapping[str, Any]],
                where: Optional[Mapping[str, Any]] = None) -> List[Mapping[str, Any]]:
  """Rows whose `column` equals `value` (as text) or is empty, for each filter."""
  where = dict(where or {})
  out = []
  for row in rows:
    if all(row.get(k) is None or str(row.get(k)) == str(v) for k, v in where.items()):
      out.append(row)
  return out


def _finish(fig, ax, path: str, title: Optional[str]) -> pathlib.Path:
  if title:
    ax.set_title(title)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)
  return path


def _series(rows: Sequence[Mapping[str, Any]], line: str, x: str, value: str
            ) -> Dict[Any, List[Tuple[float, float, float, int]]]:
  """{line value: [(x, mean, std, n)] sorted by x}."""
  out: Dict[Any, List[Tuple[float, float, float, int]]] = {}
  for g in collect.aggregate(rows, [line, x], value):
    if g[x] is None:
      continue
    out.setdefault(g[line], []).append((float(g[x]), g["mean"], g["std"], g["n"]))
  return {k: sorted(v) for k, v in out.items()}


def _method_key(method: Any) -> Tuple[int, str]:
  m = str(method)
  return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def scaling_plot(rows: Sequence[Mapping[str, Any]], path: str, *,
                 value: str = "best", ylabel: Optional[str] = None,
                 title: Optional[str] = None,
                 where: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
  """Score vs model parameters (log x), one line per method, error bars over seeds."""
  rows = filter_rows(rows, where)
  series = _series(rows, "method", "parameters", value)
  if not series:
    raise ValueError(f"No rows with both `parameters` and `{value}` to plot (after "
                     f"filters {dict(where or {})}).")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for method in sorted(series, key=_method_key):
    points = series[method]
    ax.errorbar([p[0] for p in points], [p[1] for p in points],
                yerr=[p[2] for p in points], marker="o", capsize=3,
                label=METHOD_LABELS.get(str(method), str(method)))
  ax.set_xscale("log")
  ax.set_xlabel("Model parameters")
  ax.set_ylabel(ylabel or _metric_label(rows, value))
  ax.legend()
  return _finish(fig, ax, path, title)


def _metric_label(rows: Sequence[Mapping[str, Any]], value: str) -> str:
  metrics = sorted({str(r.get("metric")) for r in rows if r.get("metric")})
  tasks = sorted({str(r.get("task")) for r in rows if r.get("task")})
  return f"{'/'.join(metrics) or value} ({value}; {', '.join(tasks)})"


def ablation_plot(rows: Sequence[Mapping[str, Any]], path: str, axis: str, *,
                  method: str = "prompt_tuning", value: str = "best",
                  ylabel: Optional[str] = None, title: Optional[str] = None,
                  where: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
  """Figure 3 style ablation over `axis` ('prompt_length' or 'init') of `method`."""
  if axis not in ("prompt_length", "init"):
    raise ValueError(f"axis must be 'prompt_length' or 'init', not {axis!r}.")
  rows = [r for r in filter_rows(rows, where)
          if r.get("method") == method and r.get(axis) is not None]
  if not rows:
    raise ValueError(f"No {method} rows with a value of {axis!r} to plot.")
  sizes = sorted({r["parameters"] for r in rows if r.get("parameters") is not None})
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.2))
  label = (lambda v: f"{v}" if axis == "prompt_length" else
           INIT_LABELS.get(str(v), str(v)))
  if len(sizes) > 1:
    series = _series(rows, axis, "parameters", value)
    keys = sorted(series, key=lambda v: (float(v) if axis == "prompt_length" else
                                         list(INIT_LABELS).index(v)
                                         if v in INIT_LABELS else 99, str(v)))
    for key in keys:
      points = series[key]
      ax.errorbar([p[0] for p in points], [p[1] for p in points],
                  yerr=[p[2] for p in points], marker="o", capsize=3,
                  label=(f"P = {key}" if axis == "prompt_length" else label(key)))
    ax.set_xscale("log")
    ax.set_xlabel("Model parameters")
    ax.legend()
  else:
    groups = collect.aggregate(rows, [axis], value)
    if axis == "prompt_length":
      groups.sort(key=lambda g: float(g[axis]))
      ax.errorbar([g[axis] for g in groups], [g["mean"] for g in groups],
                  yerr=[g["std"] for g in groups], marker="o", capsize=3)
      ax.set_xscale("log")
      ax.set_xticks([g[axis] for g in groups])
      ax.set_xticklabels([str(g[axis]) for g in groups])
      ax.set_xlabel("Prompt length (tokens)")
    else:
      order = list(INIT_LABELS)
      groups.sort(key=lambda g: order.index(g[axis]) if g[axis] in order else 99)
      ax.bar(range(len(groups)), [g["mean"] for g in groups],
             yerr=[g["std"] for g in groups], capsize=4, color="tab:blue", alpha=0.8)
      ax.set_xticks(range(len(groups)))
      ax.set_xticklabels([label(g[axis]) for g in groups])
      ax.set_xlabel("Prompt initialization")
    if sizes:
      ax.text(0.01, 0.01, f"{sizes[0]:,} parameters", transform=ax.transAxes,
              fontsize=8, color="gray")
  ax.set_ylabel(ylabel or _metric_label(rows, value))
  return _finish(fig, ax, path, title)


def methods_plot(rows: Sequence[Mapping[str, Any]], path: str, *,
                 value: str = "best", baselines: Optional[Mapping[str, float]] = None,
                 ylabel: Optional[str] = None, title: Optional[str] = None,
                 where: Optional[Mapping[str, Any]] = None,
                 order: Optional[Sequence[str]] = None) -> pathlib.Path:
  """One bar per method (mean ± std over seeds) at one model size, with optional
  horizontal reference lines (e.g. `{'no prompt': 0.0}`); `order` lists methods
  in bar order (default `METHOD_ORDER`; others go last)."""
  rows = filter_rows(rows, where)
  order = list(order or METHOD_ORDER)
  rank = lambda m: (order.index(m) if m in order else len(order), str(m))
  groups = sorted(collect.aggregate(rows, ["method"], value),
                  key=lambda g: rank(g["method"]))
  if not groups:
    raise ValueError(f"No rows with a `{value}` to plot.")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(max(6.5, 1.15 * len(groups)), 4.2))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  ax.bar(range(len(groups)), [g["mean"] for g in groups],
         yerr=[g["std"] for g in groups], capsize=4,
         color=[colors[i % len(colors)] for i in range(len(groups))], alpha=0.85)
  for i, g in enumerate(groups):
    ax.text(i, g["mean"] + g["std"] + 0.5, f"{g['mean']:.1f}", ha="center",
            va="bottom", fontsize=8)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels([textwrap.fill(METHOD_LABELS.get(str(g["method"]),
                                                      str(g["method"])), 13)
                      for g in groups], fontsize=9)
  for (name, level), style in zip((baselines or {}).items(), ("--", ":", "-.")):
    ax.axhline(level, linestyle=style, color="gray", label=name)
  if baselines:
    ax.legend(fontsize=8, loc="lower right")
  ax.set_ylabel(ylabel or _metric_label(rows, value))
  return _finish(fig, ax, path, title)


def transfer_plot(table: Sequence[Mapping[str, Any]], path: str, *,
                  metric: str = "accuracy",
                  methods: Sequence[str] = ("model_tuning", "prompt_tuning"),
                  title: Optional[str] = None) -> pathlib.Path:
  """Grouped bars: one group per target task (`transfer.transfer_table` rows), one
  bar per method (mean ± std over seeds)."""
  if not table:
    raise ValueError("An empty transfer table has nothing to plot.")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  width = 0.8 / len(methods)
  for i, method in enumerate(methods):
    xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(table))]
    ax.bar(xs, [row.get(f"{method}_{metric}") or 0.0 for row in table], width,
           yerr=[row.get(f"{method}_{metric}_std") or 0.0 for row in table],
           capsize=3, label=METHOD_LABELS.get(method, method), alpha=0.85)
  ax.set_xticks(range(len(table)))
  ax.set_xticklabels([row.get("domain") or row["task"] for row in table],
                     fontsize=8, rotation=15)
  ax.set_ylabel(metric)
  ax.legend(fontsize=8)
  return _finish(fig, ax, path, title)


def curves_plot(curves: Mapping[str, Sequence[Tuple[float, float]]], path: str, *,
                baselines: Optional[Mapping[str, float]] = None,
                xlabel: str = "training step", ylabel: str = "score",
                title: Optional[str] = None) -> pathlib.Path:
  """One line per label through its (x, y) points, optional reference lines."""
  if not any(curves.values()):
    raise ValueError("No points to plot.")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for label, points in curves.items():
    points = sorted(points)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
  for (name, level), style in zip((baselines or {}).items(), ("--", ":", "-.")):
    ax.axhline(level, linestyle=style, color="gray", label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8)
  return _finish(fig, ax, path, title)
