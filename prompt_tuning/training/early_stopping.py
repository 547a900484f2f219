"""Early stopping: end a run when the chosen metric stops improving.

`TrainConfig.early_stopping_patience = N` stops training after N evaluations in a
row without a new best of the selected metric (`best_metric`, the one that picks
`best/`). The count is derived from the best record's step, `(step - best step) /
eval_period`, so a resumed run counts exactly as an uninterrupted one. A stopped
run ends like a finished one: the state and export of the stopping step are
saved, `best/` holds the best evaluation, and `complete.json` records
`early_stopped` (a rerun then does nothing).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from prompt_tuning.errors import UserError


def check(patience: Optional[int], eval_period: int, evaluates: bool) -> None:
  """Refuses a patience that could never act, before anything is loaded."""
  if patience is None:
    return
  if not isinstance(patience, int) or patience < 1:
    raise UserError(f"TrainConfig.early_stopping_patience must be an integer >= 1 "
                    f"(evaluations without improvement); got {patience!r}.")
  if eval_period <= 0 or not evaluates:
    raise UserError(f"TrainConfig.early_stopping_patience={patience} needs periodic "
                    f"evaluations; set TrainConfig.eval_period > 0 (it is "
                    f"{eval_period}) and an evaluation split.")


def evaluations_without_improvement(step: int, best: Optional[Mapping[str, Any]],
                                    eval_period: int) -> Optional[int]:
  """How many evaluations since the best one (None before any best)."""
  if not best or "step" not in best:
    return None
  return max(0, (int(step) - int(best["step"])) // eval_period)


def due(step: int, best: Optional[Mapping[str, Any]], patience: Optional[int],
        eval_period: int) -> bool:
  """True when the run should stop after the evaluation at `step`."""
  if patience is None:
    return False
  stale = evaluations_without_improvement(step, best, eval_period)
  if stale is None or stale < patience:
    return False
  logging.info("Early stopping at step %d: %s has not improved for %d evaluations "
               "(best %.4g at step %d; patience %d).", step, best.get("metric"), stale,
               best.get("value", float("nan")), best["step"], patience)
  return True
