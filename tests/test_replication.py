"""prompt_tuning/research/replication.py: the learning-rate grid is widened until its
best is interior, curves are judged flat, budgets matched (pure logic, fake scorers)."""
import pytest

from prompt_tuning.research import replication as rep


def _scorer(peak, calls):
  """Score = -|log3(lr / peak)| (best at `peak`); records what it was asked."""
  import math  # pylint: disable=g-import-not-at-top

  def score(grid):
    calls.append(list(grid))
    return {lr: -abs(math.log(lr / peak, 3)) for lr in grid}
  return score


def test_lr_grid_has_the_default_second_from_the_bottom():
  assert rep.lr_grid(0.3) == [0.1, 0.3, 0.9, 2.7]
  assert rep.lr_grid(1e-3, size=2) == [0.00033, 0.001]
  with pytest.raises(ValueError):
    rep.lr_grid(1.0, size=1)


def test_best_at_the_top_edge_widens_upwards_until_interior():
  calls = []
  out = rep.search_lr([0.1, 0.3, 0.9, 2.7], _scorer(24.3, calls), factor=3.0)
  assert out["grid"] == [0.1, 0.3, 0.9, 2.7, 8.1, 24.0, 72.0]
  assert out["best_lr"] == 24.0 and out["interior"] and out["widenings"] == 3
  assert calls[0] == [0.1, 0.3, 0.9, 2.7] and len(calls) == 4
  assert out["grid"][0] < out["best_lr"] < out["grid"][-1]


def test_best_at_the_bottom_edge_widens_downwards():
  out = rep.search_lr([1e-3, 3e-3, 9e-3, 2.7e-2], _scorer(1e-4, []), factor=3.0)
  assert out["grid"][:4] == [3.7e-5, 1.1e-4, 3.3e-4, 1e-3] and out["interior"]
  assert out["best_lr"] == 1.1e-4 and out["widenings"] == 3


def test_interior_best_stops_at_once():
  calls = []
  out = rep.search_lr([0.1, 0.3, 0.9, 2.7], _scorer(0.9, calls))
  assert out["grid"] == [0.1, 0.3, 0.9, 2.7] and out["best_lr"] == 0.9
  assert out["interior"] and out["widenings"] == 0 and len(calls) == 1


def test_widening_gives_up_after_max_and_says_so():
  out = rep.search_lr([1.0, 3.0], _scorer(1e6, []), max_widenings=2)
  assert out["grid"] == [1.0, 3.0, 9.0, 27.0] and not out["interior"]
  assert out["best_lr"] == 27.0


def test_a_flat_grid_widens_upwards_until_something_learns():
  # LoPA under AdamW at small rates: 0 everywhere, the first learning at 0.081.
  def score(grid):
    return {lr: (0.0 if lr < 0.05 else 80.0 if lr < 0.2 else 30.0) for lr in grid}
  out = rep.search_lr([3.3e-4, 1e-3, 3e-3, 9e-3], score)
  assert out["grid"] == [3.3e-4, 1e-3, 3e-3, 9e-3, 0.027, 0.081, 0.24]
  assert out["best_lr"] == 0.081 and out["interior"] and out["widenings"] == 3


def test_a_plateau_of_equal_best_scores_picks_its_middle():
  scores = {0.1: 90.0, 0.3: 100.0, 0.9: 100.0, 2.7: 100.0, 8.1: 50.0}
  assert rep.best_lr(list(scores), scores) == 0.9
  assert rep.widen(list(scores), scores) is None
  # All equal: one rate above is tried; then the middle of the plateau is interior.
  flat = {0.1: 100.0, 0.3: 100.0, 0.9: 100.0, 2.7: 100.0}
  assert rep.widen(list(flat), flat) == 8.1
  flat[8.1] = 40.0  # the plateau still runs into the smallest rate: widen down
  assert rep.widen(list(flat), flat) == 0.033 and rep.best_lr(list(flat), flat) == 0.3
  flat[0.033] = 60.0
  assert rep.widen(list(flat), flat) is None and rep.best_lr(list(flat), flat) == 0.3


def test_ties_prefer_the_smaller_rate_and_missing_scores_are_refused():
  assert rep.widen([0.1, 0.3, 0.9], {0.1: 5.0, 0.3: 5.0, 0.9: 1.0}) == pytest.approx(
      0.033)
  # A best shared with the largest rate is not bracketed (BitFit: 46.6 at 3e-3 and 9e-3).
  assert rep.widen([0.1, 0.3, 0.9], {0.1: 1.0, 0.3: 5.0, 0.9: 5.0}) == 2.7
  with pytest.raises(ValueError, match="No score"):
    rep.widen([0.1, 0.3], {0.1: 1.0})


def test_flattened():
  rising = [(100, 10.0), (200, 30.0), (300, 50.0), (400, 70.0)]
  plateau = [(100, 60.0), (200, 85.0), (300, 85.5), (400, 85.2)]
  assert not rep.flattened(rising)
  assert rep.flattened(plateau, tolerance=1.0)
  assert not rep.flattened(plateau, tolerance=0.4)  # 85.5 - 85.0 = 0.5 >= 0.4
  assert not rep.flattened(plateau[:3])  # too few points


def test_closest_budget_in_log_ratio():
  counts = {"a": 1000, "b": 5000, "c": 7000}
  assert rep.closest(counts, 6144) == "c"
  assert rep.closest(counts, 2100) == "a"  # 2.1x vs 2.38x
  assert rep.closest(counts, 2300) == "b"  # 2.17x, though 1000 is nearer linearly
  with pytest.raises(ValueError):
    rep.closest({}, 10)


def test_trained_parameters_counts_only_the_trainable_subtree():
  from prompt_tuning.methods import lora, prompt  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.config import preset  # pylint: disable=g-import-not-at-top
  config = preset("tiny")  # emb 32, 2+2 layers
  assert rep.trained_parameters(prompt.prompt_tuning(length=7), config) == 7 * 32
  # q and v of 2 encoder self-, 2 decoder self- and 2 cross-attentions: 6 x 2 x
  # (32 x r + r x (4 heads x 8)).
  assert rep.trained_parameters(lora.lora(rank=2), config) == 6 * 2 * (64 + 64)
