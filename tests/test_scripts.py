"""scripts/*.py end to end on the bundled tiny model (a few steps, small evaluations).

One shortened replication (`scripts/replicate_tiny.py`: prompt design, prompt tuning
x 2 seeds, model tuning, the domain-shift evaluations and a 2-prompt ensemble) makes
the MODEL_DIRs that the other scripts then read: sweep, evaluate, extract, diff,
nearest tokens and plots.
"""
import json
import os
import pathlib
import shlex

import numpy as np
import pytest
import yaml

from conftest import load_script

from prompt_tuning.run_dir import train_state
from prompt_tuning.run_dir import layout
from prompt_tuning import cli
from prompt_tuning.research import collect

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TASK = "taskless_tiny_shift_count_source"
QUICK = ["--steps", "2", "--seeds", "1", "--ensemble", "2", "--max_eval_examples",
         "16", "--batch_size", "8", "--experiments",
         "methods,shift,ensemble,budget,interpret",
         "--budget_steps", "4",
         "--methods", "prompt_design,prompt_tuning,model_tuning"]


def _script(name):
  return load_script(name)


@pytest.fixture(scope="module")
def replication(tmp_path_factory):
  parent = tmp_path_factory.mktemp("replicate")
  cwd = os.getcwd()
  os.chdir(parent)  # a relative --output_dir, as on the command line
  try:
    results = _script("replicate_tiny").main(["--output_dir", "out"] + QUICK)
  finally:
    os.chdir(cwd)
  return parent / "out", results


def _run_dir(out, name):
  return out / "runs" / "tiny_bundled" / name / "seed0"


# ---------------------------------------------------------------------------- replicate


def test_replication_tables_figures_and_csv(replication):
  out, results = replication
  assert results["failed"] == []
  timing = [json.loads(l) for l in (out / "timing.jsonl").read_text().splitlines()]
  assert [t["name"] for t in timing][-3:] == ["no_prompt", "shift", "ensemble"]
  assert results["timing"]["steps"] == len(timing) == 6 + 3
  on_disk = json.loads((out / "results.json").read_text())
  assert on_disk["methods"]["trained"] == {"prompt_design": 0, "prompt_tuning": 1280,
                                           "model_tuning": 1312512}
  groups = {g["method"]: g for g in on_disk["methods"]["groups"]}
  assert set(groups) == {"prompt_design", "prompt_tuning", "model_tuning"}
  assert all(0.0 <= g["mean"] <= 100.0 and g["n"] == 1 for g in groups.values())
  # Prompt design is the frozen model with its task word: near its manifest skill.
  assert groups["prompt_design"]["mean"] >= 25.0
  rows = collect.read_csv(str(out / "results.csv"))
  assert list(rows[0]) == collect.columns(["TRAIN_STEPS"])
  assert {r["status"] for r in rows} == {"done"}
  assert {r["parameters"] for r in rows} == {1312512}
  budget = {r["method"]: r for r in rows if r["TRAIN_STEPS"] == 4}
  assert set(budget) == {"prompt_tuning", "model_tuning"}
  for method, curve in results["budget"]["curves"].items():
    assert [s for s, _ in curve] == [2, 4]  # evaluated every --steps
    assert budget[method]["final"] == curve[-1][1]
  (interpreted,) = results["interpret"]  # the one length-10 prompt of seed 0
  assert (interpreted["init"], interpreted["seed"]) == ("class_labels", 0)
  assert len(interpreted["top1"]) == 10
  assert all(-1.0 <= cos <= 1.0 and token for token, cos in interpreted["top1"])
  for name in ("methods", "shift", "budget"):
    assert (out / "figures" / f"tiny_count_{name}.png").read_bytes()[:8] == PNG
  md = (out / "results.md").read_text()
  assert "load average" in md and "## Prompt ensemble" in md
  assert "| `taskless_tiny_shift_count_new_nouns` | unseen nouns |" in md
  config = yaml.safe_load((out / "sweep.yaml").read_text())
  assert config["bindings"]["CLASS_LABELS"][0] == "five"  # count's label words


def test_shift_table_has_every_domain_for_both_methods(replication):
  _, results = replication
  table = results["shift"]["table"]
  assert [r["domain"] for r in table] == ["in-domain", "unseen nouns",
                                          "unseen mood words", "longer sentences",
                                          "all three shifts"]
  for row in table:
    assert row["delta_accuracy"] == pytest.approx(
        row["prompt_tuning_accuracy"] - row["model_tuning_accuracy"])
  # The in-domain row is the source task's validation set: the same number the
  # training run logged at its last step (same weights, same 16 examples).
  source = {r["train_method"]: r["accuracy"] for r in results["shift"]["rows"]
            if r["task"] == TASK}
  out, _ = replication
  logged = layout.evaluations(_run_dir(out, "prompt_tuning-p10-class_labels"),
                                  TASK)[-1]["accuracy"]
  assert source["prompt_tuning"] == logged


def test_ensemble_is_the_majority_vote_of_its_members(replication):
  out, results = replication
  e = results["ensemble"]
  assert set(e["members"]) == {"seed0", "seed1"} and e["examples"] == 16
  assert e["mean"] == pytest.approx(sum(e["members"].values()) / 2)
  records = [json.loads(l) for l in
             (out / "ensemble" / "predictions.jsonl").read_text().splitlines()]
  by_example = {}
  for r in records:
    by_example.setdefault(r["example"], {})[r["prompt"]] = r
  hits = 0
  for answers in by_example.values():
    votes = answers["ensemble"]["votes"]
    assert votes == [answers["seed0"]["prediction"], answers["seed1"]["prediction"]]
    assert answers["ensemble"]["prediction"] == votes[0]  # a 1-1 tie: first prompt
    hits += answers["ensemble"]["prediction"] == answers["ensemble"]["targets"]
  assert e["ensemble"] == pytest.approx(100.0 * hits / 16)


# ---------------------------------------------------------------------------- sweep


def test_sweep_lists_collects_and_reruns_only_missing_runs(replication, capsys):
  out, _ = replication
  script = _script("sweep")
  config = str(out / "sweep.yaml")
  assert yaml.safe_load((out / "sweep.yaml").read_text())["output_dir"] == "out"
  config = [config, "--output_dir", str(out)]  # relative to where it was written
  assert script.main(["commands", *config]) == 0
  assert capsys.readouterr().out == ""  # everything is done
  design = _run_dir(out, "prompt_design")
  (design / "metrics.jsonl").rename(design / "old.jsonl")
  prompt_dir = _run_dir(out, "prompt_tuning-p10-class_labels")
  before = (prompt_dir / "metrics.jsonl").stat().st_mtime_ns
  script.main(["commands", *config])
  (line,) = capsys.readouterr().out.splitlines()
  argv = shlex.split(line)
  assert argv[:3] == ["python", "-m", "prompt_tuning.eval"]
  assert "--gin_file=methods/prompt_design.gin" in argv
  assert (f"--gin_bindings=EVAL_OUTPUT_DIR = {str(design)!r}" in
          cli.rewrite_gin_args(argv))
  csv_path = out / "again.csv"
  # In a child `python -m prompt_tuning.eval`, logged to <output_dir>/logs/.
  assert script.main(["run", *config, "--csv", str(csv_path), "--subprocess"]) == 0
  assert (prompt_dir / "metrics.jsonl").stat().st_mtime_ns == before  # not rerun
  log = (out / "logs" / "tiny_bundled__prompt_design__seed0.log").read_text()
  assert log.startswith("$ python -m prompt_tuning.eval ")
  new = layout.evaluations(design)
  old = [json.loads(l) for l in (design / "old.jsonl").read_text().splitlines()]
  assert new[0]["accuracy"] == old[0]["accuracy"]  # same frozen model, same data
  rows = collect.read_csv(str(csv_path))
  assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
  listing = capsys.readouterr().out
  assert "5 of 6 runs already done; 1 to run." in listing


# ---------------------------------------------------------------------------- extract


def test_extract_prompt_from_exports_and_state(replication, tmp_path, capsys):
  out, _ = replication
  script = _script("extract_prompt")
  run = _run_dir(out, "prompt_tuning-p10-class_labels")
  assert script.main([str(run), str(tmp_path / "best.npy")]) == 0
  best = np.load(tmp_path / "best.npy")
  assert best.shape == (10, 128) and best.dtype == np.float32
  np.testing.assert_array_equal(best, np.load(run / "best" /
                                              "encoder.prompt.prompt.npy"))
  assert script.main([str(run), str(tmp_path / "s2.npy"), "--checkpoint", "2"]) == 0
  state = train_state.read_trainable(run, 2)["encoder/prompt/prompt"]
  np.testing.assert_array_equal(np.load(tmp_path / "s2.npy"), state)
  assert script.main([str(_run_dir(out, "model_tuning")),
                      str(tmp_path / "m.npy")]) == 1
  assert "no encoder prompt" in capsys.readouterr().err


# ---------------------------------------------------------------------------- diff


def test_diff_shows_what_each_method_changed(replication, tmp_path):
  from prompt_tuning.tiny import assets
  out, _ = replication
  script = _script("diff_checkpoints")
  frozen = os.path.relpath(assets.CHECKPOINT_PATH)  # relative paths work too
  prompt_run = _run_dir(out, "prompt_tuning-p10-class_labels")
  assert script.main([frozen, str(prompt_run), "--json",
                      str(tmp_path / "p.json")]) == 0
  p = json.loads((tmp_path / "p.json").read_text())["summary"]
  assert p["only_b"] == ["encoder/prompt/prompt"] and p["changed"] == []
  assert p["counts"]["same"] == 52 and p["frozen_unchanged"]
  model_run = _run_dir(out, "model_tuning")
  assert script.main([frozen, str(model_run), "--json",
                      str(tmp_path / "m.json")]) == 0
  m = json.loads((tmp_path / "m.json").read_text())
  assert m["summary"]["counts"] == {"changed": 52}
  assert all(d["rel_l2"] > 0 for d in m["parameters"])
  # Checked against prompt tuning's regexes, model tuning's changes are flagged.
  assert script.main([frozen, str(model_run), "--trainable", ".*/prompt/.*"]) == 2


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_prompt_file_and_model_dirs(replication, tmp_path):
  out, results = replication
  prompt_run = _run_dir(out, "prompt_tuning-p10-class_labels")
  npy = tmp_path / "p.npy"
  np.save(npy, np.load(prompt_run / "best" / "encoder.prompt.prompt.npy"))
  rows = _script("evaluate").main([
      "--source", f"file={npy}", "--source", f"dir={prompt_run}",
      "--source", f"model={_run_dir(out, 'model_tuning')}",
      "--task", TASK, "--model_gin", "models/tiny_bundled.gin",
      "--gin_file", "demo/tiny_common.gin", "--gin", "MAX_EVAL_EXAMPLES = 16",
      "--output", str(tmp_path / "table")])
  by_source = {r["source"]: r for r in rows}
  assert set(by_source) == {"file", "dir", "model"}
  assert by_source["file"]["method"] == "prompt"
  assert by_source["model"]["method"] == "model"
  # The same prompt from a file and from its MODEL_DIR: the same numbers.
  assert by_source["file"]["accuracy"] == by_source["dir"]["accuracy"]
  assert by_source["file"]["loss"] == pytest.approx(by_source["dir"]["loss"])
  # The model-tuned weights score as in the replication's shift evaluation.
  shifted = {r["train_method"]: r for r in results["shift"]["rows"]
             if r["task"] == TASK}
  assert by_source["model"]["accuracy"] == shifted["model_tuning"]["accuracy"]
  table = collect.read_csv(str(tmp_path / "table.csv"))
  assert list(table[0])[:5] == ["source", "path", "method", "task", "split"]
  assert {"loss", "accuracy", "num_examples"} <= set(table[0])
  assert json.loads((tmp_path / "table.json").read_text()) == rows


# ---------------------------------------------------------------------------- plots


def test_plot_sweep_from_the_replication_csv(replication, tmp_path):
  out, _ = replication
  assert _script("plot_sweep").main([str(out / "results.csv"), "--output_dir",
                                     str(tmp_path), "--prefix", "t_"]) == 0
  for kind in ("scaling", "prompt_length", "init"):
    assert (tmp_path / f"t_{kind}.png").read_bytes()[:8] == PNG


# ---------------------------------------------------------------------------- interpret


def test_nearest_tokens_recover_known_embeddings(tmp_path):
  from prompt_tuning.research import neighbors
  from prompt_tuning.tiny import assets
  table = neighbors.embedding_table(str(assets.CHECKPOINT_PATH))
  pieces = neighbors.Pieces(str(assets.VOCAB_PATH))
  words = ["▁person", "▁animal", "▁positive", "▁cheese"]
  ids = [pieces.processor.piece_to_id(w) for w in words]
  rng = np.random.default_rng(0)
  prompt = table[ids] * 2.0 + 0.01 * rng.normal(size=(4, table.shape[1]))
  np.save(tmp_path / "known.npy", prompt.astype(np.float32))
  report = _script("nearest_tokens").main([
      str(tmp_path / "known.npy"), "--tiny", "-k", "3", "--output",
      str(tmp_path / "n.json")])
  positions = report[0]["positions"]
  assert [p["tokens"][0] for p in positions] == words
  assert [p["ids"][0] for p in positions] == ids
  assert json.loads((tmp_path / "n.json").read_text()) == report
  assert all(max(p["ids"]) < pieces.size for p in positions)  # no padding rows


def test_nearest_tokens_on_released_prompts(tmp_path, t5_vocab_path):
  from conftest import RELEASED_PROMPTS
  released = np.load(RELEASED_PROMPTS / "rte.npy")
  rng = np.random.default_rng(1)
  table = rng.normal(size=(32128, released.shape[1])).astype(np.float32)
  planted = {0: 1000, 5: 32099, 99: 7}  # positions -> ids (32099 = <extra_id_0>)
  for position, token_id in planted.items():
    table[token_id] = released[position] * 0.5
  np.save(tmp_path / "table.npy", table)
  report = _script("nearest_tokens").main([
      str(RELEASED_PROMPTS / "rte.npy"), "--embeddings", str(tmp_path / "table.npy"),
      "--vocab", t5_vocab_path, "--output", str(tmp_path / "n.tsv")])
  positions = report[0]["positions"]
  assert len(positions) == released.shape[0]
  for position, token_id in planted.items():
    assert positions[position]["ids"][0] == token_id
    assert positions[position]["cosine"][0] == pytest.approx(1.0, abs=1e-4)
  assert positions[5]["tokens"][0] == "<extra_id_0>"
  lines = (tmp_path / "n.tsv").read_text().splitlines()
  assert lines[0] == "prompt\tposition\trank\tid\ttoken\tcosine"
  assert len(lines) == 1 + released.shape[0] * 5


# ---------------------------------------------------------------------------- transfer


def test_transfer_script_reuses_runs_and_reproduces_the_shift_table(replication):
  out, results = replication
  args = ["--preset", "tiny_count", "--model_gin", "models/tiny_bundled.gin",
          "--gin_file", "demo/tiny_common.gin", "--gin", "TRAIN_STEPS = 2",
          "--gin", "MAX_EVAL_EXAMPLES = 16", "--prompt_length", "10",
          "--init", "class_labels", "--seeds", "0", "--output_dir", str(out)]
  script = _script("transfer")
  plan = script.plan_from_args(script.parse_args(args + ["--checkpoint", "2"]))
  assert [r.name for r in script.transfer.training_runs(plan)] == [
      "tiny_bundled/model_tuning/seed0",
      "tiny_bundled/prompt_tuning-p10-class_labels/seed0"]
  assert "TRAIN_STEPS = 2" not in plan.eval_bindings
  assert "MAX_EVAL_EXAMPLES = 16" in plan.eval_bindings
  before = (_run_dir(out, "model_tuning") / "metrics.jsonl").stat().st_mtime_ns
  # Step 2 is the runs' last step: new evaluations, the same numbers.
  table = script.main(args + ["--checkpoint", "2"])
  assert (_run_dir(out, "model_tuning") / "metrics.jsonl").stat().st_mtime_ns == (
      before)  # trained runs were reused, not retrained
  assert len(list((out / "evals").glob("*/*@2.json"))) == 2
  expected = results["shift"]["table"]
  assert [r["task"] for r in table] == [r["task"] for r in expected]
  for got, want in zip(table, expected):
    for key in ("model_tuning_accuracy", "prompt_tuning_accuracy", "delta_accuracy"):
      assert got[key] == pytest.approx(want[key]), (got["task"], key)
  md = (out / "table.md").read_text().splitlines()
  assert md[0] == "| Dataset | Domain | Model | Prompt | Δ |" and len(md) == 2 + 5
  rows = collect.read_csv(str(out / "transfer.csv"))
  assert len(rows) == 2 * 5 and {r["train_method"] for r in rows} == {
      "model_tuning", "prompt_tuning"}


def test_lopa_runs_twice_with_its_own_and_prompt_tunings_optimizer():
  module = _script("replicate_tiny")
  args = module.parse_args(["--output_dir", "unused", "--seeds", "2"])
  grids = module.sweep_config(args, ["methods"])["grids"]
  lopa = [g for g in grids if g["method"] == ["lopa"]]
  assert len(lopa) == 2 and "OPTIMIZER" not in lopa[0]
  assert lopa[1]["OPTIMIZER"] == ["@optim.adafactor_prompt_tuning()"]
  assert lopa[1]["seed"] == [0, 1]
  # Without LoPA among the methods (or without the methods experiment), no extra runs.
  args = module.parse_args(["--output_dir", "unused", "--methods", "prompt_tuning"])
  assert all("OPTIMIZER" not in g for g in module.sweep_config(args, ["methods"])[
      "grids"])
  args = module.parse_args(["--output_dir", "unused"])
  assert all("OPTIMIZER" not in g for g in module.sweep_config(args, ["shift"])[
      "grids"])
