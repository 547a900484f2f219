"""The decisions of a fair replication, as pure functions (scripts/replicate.py).

* Learning-rate search: a log-spaced grid, widened on the side where the best score
  sits until the best is interior (neither the smallest nor the largest value tried
  reaches the best score); a grid that scores the same at every rate is widened
  upwards.
* Step budget: a validation curve has flattened when its second half improves on
  its first half's best by less than a tolerance.
* Budget matching: per method, the setting whose trained-parameter count is closest
  to a target (counted from shapes with `jax.eval_shape`, no weights).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple


def round_lr(value: float) -> float:
  """Two significant digits (3e-4, 0.0091 → 0.0091, 0.95), so names stay short."""
  return float(f"{value:.2g}")


def lr_grid(center: float, size: int = 4, factor: float = 3.0) -> List[float]:
  """`size` learning rates, a factor apart, with `center` second from the bottom
  (one step below, the rest above): [c/f, c, c*f, c*f^2] for size 4."""
  if size < 2:
    raise ValueError(f"A learning-rate grid needs at least 2 values, got {size}.")
  return [round_lr(center * factor ** k) for k in range(-1, size - 1)]


def best_lr(grid: Sequence[float], scores: Mapping[float, float]) -> float:
  """The rate with the highest score; when several tie, the middle one of them
  (the smaller of the two middle ones for an even count)."""
  grid = sorted(grid)
  top = max(scores[lr] for lr in grid)
  tied = [lr for lr in grid if scores[lr] == top]
  return tied[(len(tied) - 1) // 2]


def widen(grid: Sequence[float], scores: Mapping[float, float],
          factor: float = 3.0) -> Optional[float]:
  """The learning rate to add, or None when the best is interior.

  The best score reached at the largest value of the grid asks for a larger rate,
  at the smallest for a smaller one, also when other rates tie with it: a best
  that is a plateau running into an edge is not bracketed. A grid that scores the
  same everywhere (e.g. 0 at every rate: the method has not started to learn at
  any of them) therefore asks for a larger rate.
  """
  grid = sorted(grid)
  missing = [lr for lr in grid if lr not in scores]
  if missing:
    raise ValueError(f"No score for learning rates {missing}.")
  top = max(scores[lr] for lr in grid)
  if scores[grid[-1]] == top:
    return round_lr(grid[-1] * factor)
  if scores[grid[0]] == top:
    return round_lr(grid[0] / factor)
  return None


def search_lr(grid: Sequence[float], score: Callable[[List[float]], Mapping[float, float]],
              factor: float = 3.0, max_widenings: int = 4) -> Dict[str, Any]:
  """Scores `grid`, then widens it until its best is interior.

  Args:
    grid: the first learning rates.
    score: learning rates → {lr: validation score} (trains what it must; called
      with the whole grid each round, so finished runs should be reused).
    factor: the ratio between neighbouring rates.
    max_widenings: give up (interior False) after this many added rates.

  Returns:
    {"grid": sorted rates tried, "scores": {lr: score}, "best_lr", "interior",
     "widenings"}.
  """
  grid = sorted(round_lr(x) for x in grid)
  scores: Dict[float, float] = {}
  widenings = 0
  while True:
    scores.update(score(grid))
    extra = widen(grid, scores, factor)
    if extra is None or widenings >= max_widenings:
      break
    grid = sorted(grid + [extra])
    widenings += 1
  best = best_lr(grid, scores)
  return {"grid": grid, "scores": {lr: scores[lr] for lr in grid}, "best_lr": best,
          "interior": extra is None, "widenings": widenings}


def flattened(curve: Sequence[Tuple[int, float]], tolerance: float = 1.0) -> bool:
  """Whether a validation curve [(step, score)] has stopped improving: the best of
  its second half beats the best of its first half by less than `tolerance`.

  Curves with fewer than 4 points are never flat (too few to tell).
  """
  points = sorted(curve)
  if len(points) < 4:
    return False
  half = len(points) // 2
  first = max(v for _, v in points[:half])
  second = max(v for _, v in points[half:])
  return second - first < tolerance


def closest(counts: Mapping[Any, int], target: int) -> Any:
  """The key whose count is nearest `target` in log ratio (ties: the smaller)."""
  if not counts:
    raise ValueError("No candidate settings to match the parameter budget.")
  return min(counts, key=lambda k: (abs(math.log(max(counts[k], 1) / target)),
                                    counts[k]))


def trained_parameters(method, model_config) -> int:
  """Trainable parameters of a `Method` on a `T5Config`, from shapes only."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  tokens = jnp.ones((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: method.build(model_config).init(
      jax.random.PRNGKey(0), tokens, tokens)["params"])
  return int(sum(int(np.prod(getattr(leaf, "value", leaf).shape))
                 for path, leaf in flatten(shapes).items()
                 if method.is_trainable(path)))
