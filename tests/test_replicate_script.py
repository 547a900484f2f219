"""scripts/replicate.py end to end on its smoke profile (2-value grids, a few steps):
every experiment writes its numbers to summary.json, and a rerun reuses every run."""
import contextlib
import io
import json
import os

import pytest

from conftest import load_script

from prompt_tuning import errors
from prompt_tuning.tiny import assets

ARGS = ["--profile", "smoke", "--methods", "prompt_tuning", "--sizes", "1.3m",
        "--seeds", "1", "--experiments", "baselines,budget,objectives,scaling"]


@pytest.fixture(scope="module")
def replication(tmp_path_factory):
  out = tmp_path_factory.mktemp("replicate") / "out"
  script = load_script("replicate")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    summary = script.main(["--output_dir", str(out)] + ARGS)
  (out.parent / "stdout.txt").write_text(printed.getvalue())
  return script, out, summary


def test_summary_has_every_number_of_the_tables(replication):
  _, out, summary = replication
  assert json.loads((out / "summary.json").read_text())["task"] == summary["task"]
  assert summary["failed"] == []
  (base,) = summary["baselines"]
  assert base["method"] == "prompt_tuning" and base["trained_parameters"] == 1280
  grid = base["lr_grid"]
  assert len(grid) >= 2 and grid == sorted(grid) and base["best_lr"] in grid
  assert set(base["lr_scores"]) == {str(x) for x in grid}
  if base["lr_interior"]:  # (a flat grid may give up with its middle picked)
    assert grid[0] < base["best_lr"] < grid[-1]
  else:
    assert base["widenings"] == 1  # the smoke profile's maximum
  assert base["steps"] in (2, 4) and base["seeds"] == [0]
  assert len(base["values"]) == 1 and base["std"] == 0.0
  assert base["curves"][str(base["steps"])]  # the recorded validation curve
  assert all(s is not None for s in [base["seconds"], base["grid_seconds"]])
  (budget,) = summary["budget"]
  assert budget["setting"] == "length 48" and budget["trained_parameters"] == 6144
  assert budget["trained_parameters_in_run"] == 6144  # read from the run's state
  objectives = {o["objective"]: o for o in summary["objectives"]}
  assert set(objectives) == {"span_only", "span_sentinel", "lm_adapted"}
  assert objectives["span_sentinel"]["task"].endswith("_1_sentinel")
  # The LM-adapted row is the baseline's own runs (the bundled model), reused.
  assert objectives["lm_adapted"]["runs"] == base["runs"]
  assert objectives["span_only"]["runs"][0].startswith("1.3m_span_only/")
  scaling = {(r["size"], r["method"]) for r in summary["scaling"]}
  assert scaling == {("1.3m", "prompt_tuning"), ("1.3m", "prompt_design")}
  assert summary["wall"]["seconds"] > 0 and summary["wall"]["mean_load"] >= 0


def test_a_doubled_budget_continues_the_shorter_run(replication):
  """The 4-step run starts from the finished 2-step run's state (its first steps
  are not trained again) and keeps its evaluations."""
  _, out, summary = replication
  (base,) = summary["baselines"]
  assert base["steps"] == 4  # a 2-point curve is never flat
  (longer,) = base["runs"]
  shorter = longer.replace("TRAIN_STEPS4", "TRAIN_STEPS2")
  printed = (out.parent / "stdout.txt").read_text()
  assert f"run {longer} (continuing {shorter.split('/')[1]})" in printed
  assert base["curves"]["4"][:2] == base["curves"]["2"]
  assert (out / "runs" / longer / "complete.json").exists()


def test_pretrains_the_missing_model_into_the_cache(replication):
  _, out, _ = replication
  directory = out / "pretrained" / "1.3m_span_only_s0"
  manifest = json.loads((directory / assets.MANIFEST_FILE).read_text())
  assert manifest["objective"] == "span_only" and manifest["steps"]["total"] == 2
  assert (directory / assets.VOCAB_FILE).read_bytes() == assets.VOCAB_PATH.read_bytes()


def test_tables_and_figures(replication):
  _, out, summary = replication
  md = (out / "results.md").read_text()
  for title in ("Tuned baselines", "Budget-matched", "Pretraining objective",
                "Scaling"):
    assert title in md
  assert "span corruption + sentinel" in md
  assert f"compute time {summary['wall']['seconds'] / 3600:.2f} h" in md
  for path in summary["figures"]:
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_every_run_and_refuses_another_profile(replication):
  script, out, summary = replication
  before = (out / "timing.jsonl").read_text().splitlines()
  again = script.main(["--output_dir", str(out)] + ARGS)
  after = (out / "timing.jsonl").read_text().splitlines()
  assert after == before  # nothing trained, evaluated or pretrained again
  assert again["baselines"][0]["mean"] == summary["baselines"][0]["mean"]
  with pytest.raises(errors.UserError, match="another profile"):
    script.main(["--output_dir", str(out), "--profile", "full"])


def test_a_raised_step_cap_reuses_every_run(replication, monkeypatch, tmp_path):
  """max_steps only chooses which runs exist: raising it on the same output directory
  keeps every run and asks only for longer ones where a curve was not flat; another
  evaluation period is still refused."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  script, out, summary = replication
  copy = tmp_path / "raised"
  shutil.copytree(out, copy)
  smoke = script.PROFILES["smoke"]
  monkeypatch.setitem(script.PROFILES, "smoke",
                      dataclasses.replace(smoke, max_steps=smoke.max_steps * 2))
  before = (copy / "timing.jsonl").read_text()
  table = script.main(["--output_dir", str(copy), "--tabulate_only"] + ARGS)
  assert (copy / "timing.jsonl").read_text() == before
  (base,) = summary["baselines"]
  longer = f"TRAIN_STEPS{smoke.max_steps * 2}"
  if base["flattened"]:
    assert table["missing"] == [] and table["baselines"][0]["mean"] == base["mean"]
  else:  # the budget doubles once more: that run is all that is missing
    assert table["missing"] and all(longer in m for m in table["missing"])
  monkeypatch.setitem(script.PROFILES, "smoke",
                      dataclasses.replace(smoke, eval_period=smoke.eval_period + 1))
  with pytest.raises(errors.UserError, match="another profile"):
    script.main(["--output_dir", str(copy), "--tabulate_only"] + ARGS)


def test_tabulate_only_trains_nothing_and_lists_what_is_missing(replication):
  import shutil  # pylint: disable=g-import-not-at-top
  script, out, summary = replication
  copy = out.parent / "tabulate"
  shutil.copytree(out, copy)
  objective_run = summary["objectives"][0]["runs"][0]
  shutil.rmtree(copy / "runs" / objective_run)
  before = (copy / "timing.jsonl").read_text()
  table = script.main(["--output_dir", str(copy), "--tabulate_only"] + ARGS)
  assert (copy / "timing.jsonl").read_text() == before  # nothing trained
  assert not (copy / "runs" / objective_run).exists()
  assert table["missing"] == [objective_run]
  assert [o["objective"] for o in table["objectives"]] == [
      o["objective"] for o in summary["objectives"]][1:]  # its row left out
  assert table["baselines"][0]["mean"] == summary["baselines"][0]["mean"]
  assert "Not finished" in (copy / "results.md").read_text()


def test_write_docs_between_markers(replication, tmp_path):
  script, _, _ = replication
  doc = tmp_path / "doc.md"
  doc.write_text(f"intro\n{script.BEGIN}\nold\n{script.END}\nrest\n")
  script.write_docs("| new | table |", [str(doc)])
  assert doc.read_text() == (f"intro\n{script.BEGIN}\n| new | table |\n{script.END}"
                             "\nrest\n")
  (tmp_path / "docs").mkdir()
  nested = tmp_path / "docs" / "nested.md"
  nested.write_text(f"{script.BEGIN}\n{script.END}\n")
  figure = tmp_path / "results" / "figures" / "scaling.png"
  script.write_docs("| t |", [str(doc), str(nested)], [str(figure)])
  assert "![scaling](results/figures/scaling.png)" in doc.read_text()
  assert nested.read_text() == (f"{script.BEGIN}\n| t |\n\n"
                                "![scaling](../results/figures/scaling.png)\n"
                                f"{script.END}\n")
  bare = tmp_path / "bare.md"
  bare.write_text("no markers\n")
  with pytest.raises(errors.UserError, match="markers"):
    script.write_docs("x", [str(bare)])


def test_a_preempted_run_stops_the_replication_a_failed_one_does_not(tmp_path):
  import types  # pylint: disable=g-import-not-at-top
  script = load_script("replicate")
  ctx = script.Context(script.PROFILES["smoke"], tmp_path, tmp_path / "cache")

  def fake_run(name, error):
    def run_in_process():
      raise error
    call = types.SimpleNamespace(run_in_process=run_in_process,
                                 command=lambda: f"train {name}")
    return types.SimpleNamespace(name=name, run=call, method="prompt_tuning",
                                 seed=0, extra=(), model_dir=tmp_path / name)

  def fake_sweep(*runs):
    return types.SimpleNamespace(runs=list(runs), status=lambda run: "missing",
                                 task_of=lambda run: "task")

  (result,) = script.run_all(ctx, fake_sweep(fake_run("a", ValueError("diverged"))))
  assert ctx.failed == ["a"] and result["failed"] and result["best"] is None
  assert script._score(result) == 0.0  # the worst rate, not a missing one
  with pytest.raises(errors.Preempted):
    script.run_all(ctx, fake_sweep(fake_run("b", errors.Preempted("SIGTERM"))))
  assert "b" not in ctx.failed and "b" in ctx.timing()
