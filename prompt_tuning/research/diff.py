"""Which parameters differ between two checkpoints, and by how much.

  a = load("gs://…/checkpoint_1100000")        # any model checkpoint
  b = load("/runs/rte")                         # a MODEL_DIR: its frozen model + the
                                                # trained parameters (latest state)
  diffs = diff(a.params, b.params)
  print(format_table(diffs)); summary(diffs, trainable=b.trainable)

Sources (`load`): a model checkpoint (T5X / Hugging Face / native); a training
MODEL_DIR, optionally `MODEL_DIR@<step|latest|best>` (the frozen model it recorded
in config.json with the trained state on top; without a saved frozen model, the
trained parameters only); a directory of `.npy` exports (`best/`, a numpy
checkpoint); or one `.npy` file.

For every path: status `same`, `changed`, `shape` (shapes differ), `only_a` or
`only_b`; for changed ones the max |b - a|, the relative change ||b - a|| / ||a||
and the fraction of entries that moved. `summary` says whether every change lies
inside the trainable regexes: the check that a frozen model stayed frozen.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from prompt_tuning.run_dir import layout, train_state
from prompt_tuning.params import matches
from prompt_tuning.research import model_dirs


@dataclasses.dataclass
class Source:
  description: str
  params: Dict[str, np.ndarray]
  trainable: Optional[List[str]] = None  # a MODEL_DIR's trainable regexes


@dataclasses.dataclass
class ParamDiff:
  path: str
  status: str
  shape_a: Optional[tuple]
  shape_b: Optional[tuple]
  max_abs: Optional[float] = None
  rel_l2: Optional[float] = None
  frac_changed: Optional[float] = None

  def as_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def _dotted_to_path(name: str) -> str:
  return name.replace(".", "/")


def load(spec: str) -> Source:
  """Parameters named by `spec` (see the module docstring) as `{path: array}`."""
  path_text, _, checkpoint = spec.partition("@")
  path = pathlib.Path(path_text)
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist (a checkpoint, MODEL_DIR, export "
                            "directory or .npy file).")
  if path.is_file() and path.suffix == ".npy":
    return Source(str(path), {_dotted_to_path(path.stem): np.load(path)})
  if layout.is_model_dir(path):
    rec = layout.read_record(path)
    which = checkpoint or "latest"
    step = layout.resolve_step(path, which)
    trainable = list(rec.get("trainable") or [])
    try:
      _, params = model_dirs.full_params(path, step)
      what = "frozen model + trained state"
    except ValueError:
      params = train_state.read_trainable(path, step)
      what = "trained state only (random frozen init, never saved)"
    return Source(f"{path} step {step} ({what})", params, trainable)
  if path.is_dir() and any(path.glob("*.npy")) and not checkpoint:
    arrays = layout.read_arrays(str(path))
    return Source(f"{path} (.npy exports)",
                  {_dotted_to_path(k): v for k, v in arrays.items()})
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  _, tree = checkpoints.load(model_dirs.local_absolute(path), weights_only=True)
  return Source(f"{path} ({checkpoints.detect_format(str(path))} checkpoint)",
                flatten(tree))


def compare(path: str, a: Optional[np.ndarray], b: Optional[np.ndarray],
            atol: float = 0.0) -> ParamDiff:
  if a is None or b is None:
    status = "only_b" if a is None else "only_a"
    return ParamDiff(path, status, None if a is None else tuple(a.shape),
                     None if b is None else tuple(b.shape))
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a64.shape != b64.shape:
    return ParamDiff(path, "shape", tuple(a64.shape), tuple(b64.shape))
  delta = np.abs(b64 - a64)
  moved = delta > atol
  max_abs = float(delta.max()) if delta.size else 0.0
  norm = float(np.linalg.norm(a64))
  rel = float(np.linalg.norm(b64 - a64)) / norm if norm > 0 else (
      0.0 if max_abs == 0 else float("inf"))
  return ParamDiff(path, "changed" if moved.any() else "same", tuple(a64.shape),
                   tuple(b64.shape), max_abs, rel,
                   float(moved.mean()) if moved.size else 0.0)


def diff(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], atol: float = 0.0
         ) -> List[ParamDiff]:
  """Per-path comparison over the union of paths (sorted)."""
  return [compare(p, a.get(p), b.get(p), atol) for p in sorted(set(a) | set(b))]


def summary(diffs: Sequence[ParamDiff], trainable: Optional[Sequence[str]] = None
            ) -> Dict[str, Any]:
  """Counts by status and, given trainable regexes, whether anything outside them
  changed (`frozen_unchanged`)."""
  counts: Dict[str, int] = {}
  for d in diffs:
    counts[d.status] = counts.get(d.status, 0) + 1
  changed = [d.path for d in diffs if d.status in ("changed", "shape")]
  out: Dict[str, Any] = {"counts": counts, "changed": changed,
                         "only_a": [d.path for d in diffs if d.status == "only_a"],
                         "only_b": [d.path for d in diffs if d.status == "only_b"]}
  if trainable is not None:
    outside = [p for p in changed if not matches(p, trainable)]
    out["trainable"] = list(trainable)
    out["changed_outside_trainable"] = outside
    out["frozen_unchanged"] = not outside
  return out


def format_table(diffs: Sequence[ParamDiff], only_differences: bool = False) -> str:
  rows = [("parameter", "status", "shape", "max |b-a|", "||b-a||/||a||", "moved")]
  for d in diffs:
    if only_differences and d.status == "same":
      continue
    shape = d.shape_a if d.shape_a is not None else d.shape_b
    if d.status == "shape":
      shape = f"{d.shape_a} vs {d.shape_b}"
    rows.append((d.path, d.status, str(shape),
                 "" if d.max_abs is None else f"{d.max_abs:.3g}",
                 "" if d.rel_l2 is None else f"{d.rel_l2:.3g}",
                 "" if d.frac_changed is None else f"{100 * d.frac_changed:.1f}%"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                   for r in rows)
