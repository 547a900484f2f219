"""prompt_tuning/research: the library behind scripts/ (no training; seconds)."""
import json
import pathlib
import shlex

import numpy as np
import pytest
import yaml

from prompt_tuning import cli
from prompt_tuning.research import collect, diff, neighbors, plots, runs, sweep
from prompt_tuning.research import transfer

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- runs


def test_command_lines_parse_back_to_the_same_gin(tmp_path):
  run = runs.GinRun("train", ["models/tiny_bundled.gin", "runs/prompt_finetune.gin"],
                    [runs.binding("MODEL_DIR", tmp_path / "it's here"),
                     runs.binding("TASK_FEATURE_LENGTHS", {"inputs": 20}),
                     runs.binding("CLASS_LABELS", ["a", "b"]),
                     runs.binding("METHOD", "@methods.prompt_tuning()"),
                     runs.binding("PROMPT_LENGTH", runs.RawGin("%OTHER"))])
  argv = shlex.split(run.command())
  assert argv[:3] == ["python", "-m", "prompt_tuning.train"]
  flags = cli.rewrite_gin_args(argv[3:])
  assert [f.split("=", 1)[1] for f in flags if f.startswith("--gin_file=")] == list(
      run.gin_files)
  assert [f.split("=", 1)[1] for f in flags if f.startswith("--gin_bindings=")] == list(
      run.bindings)
  assert "MODEL_DIR = " + repr(str(tmp_path / "it's here")) in run.bindings
  assert "METHOD = @methods.prompt_tuning()" in run.bindings
  assert "PROMPT_LENGTH = %OTHER" in run.bindings
  assert run.macro("PROMPT_LENGTH") == "%OTHER" and run.macro("NOPE") is None
  assert "--gin.CLASS_LABELS=\"['a', 'b']\"" in run.command()


def test_bad_runs_are_refused():
  with pytest.raises(ValueError, match="entry"):
    runs.GinRun("fit", [])
  with pytest.raises(ValueError, match="NAME = VALUE"):
    runs.GinRun("eval", [], ["no equals sign"])


# ---------------------------------------------------------------------------- sweep

CONFIG = {
    "output_dir": "OUT",
    "task": "taskless_tiny_topic", "design_task": "tiny_topic", "metric": "accuracy",
    "gin_files": ["demo/tiny_common.gin"],
    "bindings": {"TRAIN_STEPS": 4, "TrainConfig.log_period": 2},
    "models": {"tiny": ["models/tiny_bundled.gin"],
               "big": {"gin_files": ["models/t5_1_1_base.gin"], "parameters": 7,
                       "bindings": {"DROPOUT_RATE": 0.0}}},
    "methods": {"prefix_tuning": {"bindings": {
        "optim.adamw_prefix_tuning.learning_rate": 0.001}}},
    "grids": [
        {"model": ["tiny"], "method": ["prompt_tuning", "model_tuning"],
         "prompt_length": [1, 5], "init": ["class_labels", "random_uniform"],
         "seed": [0, 1]},
        {"model": ["big"], "method": ["prefix_tuning", "prompt_design"],
         "prompt_length": [3], "optim.adafactor_prompt_tuning.learning_rate": [0.3]},
    ],
}


def _config(tmp_path):
  return dict(CONFIG, output_dir=str(tmp_path / "sweep"))


def test_grid_collapses_unused_axes_and_builds_each_run(tmp_path):
  s = sweep.expand(_config(tmp_path))
  names = [r.name for r in s.runs]
  assert len(names) == len(set(names))
  pt = [r for r in s.runs if r.method == "prompt_tuning"]
  mt = [r for r in s.runs if r.method == "model_tuning"]
  assert len(pt) == 2 * 2 * 2 and len(mt) == 2  # lengths/inits collapse for model
  assert {r.prompt_length for r in mt} == {None} and {r.init for r in mt} == {None}
  run = next(r for r in pt if r.prompt_length == 5 and r.init == "random_uniform"
             and r.seed == 1)
  assert run.name == "tiny/prompt_tuning-p5-random_uniform/seed1"
  assert run.model_dir == tmp_path / "sweep" / "runs" / run.name
  assert run.run.gin_files == ("models/tiny_bundled.gin", "methods/prompt_tuning.gin",
                               "runs/prompt_finetune.gin", "prompts/random_uniform.gin",
                               "demo/tiny_common.gin")
  assert run.run.macro("PROMPT_LENGTH") == "5"
  assert run.run.macro("RANDOM_SEED") == "1"
  assert run.run.macro("MODEL_DIR") == repr(str(run.model_dir))
  assert run.run.macro("MIXTURE_OR_TASK_NAME") == "'taskless_tiny_topic'"
  assert mt[0].run.macro("PROMPT_LENGTH") is None
  assert mt[0].run.gin_files[1:3] == ("methods/model_tuning.gin",
                                      "runs/model_finetune.gin")
  prefix = next(r for r in s.runs if r.method == "prefix_tuning")
  assert prefix.name == "big/prefix_tuning-p3-learning_rate0.3/seed0"
  assert "methods/prefix_tuning.gin" in prefix.run.gin_files
  assert prefix.run.macro("optim.adamw_prefix_tuning.learning_rate") == "0.001"
  assert prefix.run.macro("DROPOUT_RATE") == "0.0"
  assert s.extra_axes == ["optim.adafactor_prompt_tuning.learning_rate"]


def test_prompt_design_runs_are_evaluations_without_training_bindings(tmp_path):
  s = sweep.expand(_config(tmp_path))
  design = next(r for r in s.runs if r.method == "prompt_design")
  assert design.run.entry == "eval" and not design.trains
  assert design.run.macro("MIXTURE_OR_TASK_NAME") == "'tiny_topic'"
  assert design.run.macro("EVAL_OUTPUT_DIR") == repr(str(design.model_dir))
  assert design.run.macro("TRAIN_STEPS") is None
  assert not any(b.startswith("TrainConfig.") for b in design.run.bindings)
  assert s.task_of(design) == "tiny_topic"


def test_yaml_and_json_files_give_the_same_sweep(tmp_path):
  (tmp_path / "s.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
  (tmp_path / "s.json").write_text(json.dumps(_config(tmp_path)))
  a, b = sweep.load(str(tmp_path / "s.yaml")), sweep.load(str(tmp_path / "s.json"))
  assert [r.run for r in a.runs] == [r.run for r in b.runs]
  other = sweep.load(str(tmp_path / "s.yaml"), output_dir=str(tmp_path / "x"))
  assert other.runs[0].model_dir.parts[-5] == "x"


@pytest.mark.parametrize("change, message", [
    ({"typo": 1}, "Unknown sweep keys"),
    ({"task": None}, "task"),
    ({"grids": [{"method": ["prompt_tuningg"]}]}, "unknown method"),
    ({"grids": [{"method": ["prompt_tuning"], "model": ["huge"]}]}, "huge"),
    ({"grids": [{"method": ["prompt_tuning"], "init": ["zeros"]}]}, "initializer"),
    ({"grids": [{"method": ["prompt_tuning"], "seed": []}]}, "empty list"),
    ({"models": {"tiny": {}}}, "gin files"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
  with pytest.raises(sweep.SweepConfigError, match=message):
    sweep.expand(dict(_config(tmp_path), **change))


def test_status_follows_the_final_checkpoint(tmp_path):
  s = sweep.expand(_config(tmp_path))
  run = s.runs[0]
  assert s.status(run, 4) == "missing"
  (run.model_dir / "checkpoint_2" / "state").mkdir(parents=True)
  assert s.status(run, 4) == "partial"
  (run.model_dir / "checkpoint_4.orbax-checkpoint-tmp-1" / "state").mkdir(parents=True)
  assert s.status(run, 4) == "partial"  # an unfinished orbax write does not count
  (run.model_dir / "checkpoint_4" / "state").mkdir(parents=True)
  assert s.status(run, 4) == "done" and s.train_steps(run) == 4
  design = next(r for r in s.runs if r.method == "prompt_design")
  assert s.status(design) == "missing"
  design.model_dir.mkdir(parents=True)
  (design.model_dir / "metrics.jsonl").write_text(json.dumps(
      {"step": 0, "task": "tiny_topic", "accuracy": 61.0}) + "\n")
  assert s.status(design) == "done"


# ---------------------------------------------------------------------------- collect


def test_best_and_final_pick_the_right_evaluations():
  evals = [{"step": 10, "accuracy": 50.0, "loss": 2.0},
           {"step": 20, "accuracy": 70.0, "loss": 1.0},
           {"step": 30, "accuracy": 70.0, "loss": 1.5},
           {"step": 40, "accuracy": 60.0, "loss": 1.0}]
  assert collect.best_and_final(evals, "accuracy") == {
      "best": 70.0, "best_step": 20, "final": 60.0, "final_step": 40,
      "evaluations": 4}
  loss = collect.best_and_final(evals, "loss")
  assert (loss["best"], loss["best_step"]) == (1.0, 20)
  assert collect.pick_metric([{"step": 1, "loss": 1.0, "num_examples": 5,
                               "accuracy": 3.0}], None) == "accuracy"
  assert collect.best_and_final([], "accuracy")["best"] is None


def test_mean_std_and_aggregate():
  mean, std = collect.mean_std([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5 and std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
  assert collect.mean_std([5.0]) == (5.0, 0.0)
  rows = [{"m": "a", "best": 1.0}, {"m": "a", "best": 3.0}, {"m": "b", "best": 7.0},
          {"m": "b", "best": None}]
  groups = {g["m"]: g for g in collect.aggregate(rows, ["m"])}
  assert groups["a"]["mean"] == 2.0 and groups["a"]["n"] == 2
  assert groups["b"]["n"] == 1 and groups["b"]["std"] == 0.0


def test_csv_round_trip(tmp_path):
  rows = [{"name": "x", "parameters": 1312512, "best": 66.5, "init": None},
          {"name": "y", "parameters": 7, "best": None, "init": "class_labels"}]
  path = collect.write_csv(rows, str(tmp_path / "a" / "r.csv"),
                           ["name", "parameters", "init", "best"])
  assert path.read_text().splitlines()[0] == "name,parameters,init,best"
  assert collect.read_csv(str(path)) == [
      {"name": "x", "parameters": 1312512, "init": None, "best": 66.5},
      {"name": "y", "parameters": 7, "init": "class_labels", "best": None}]


def test_parameter_count_of_the_bundled_model():
  from prompt_tuning.tiny import assets
  manifest = json.loads(assets.MANIFEST_PATH.read_text())
  assert collect.count_parameters(manifest["config"]) == manifest["parameter_count"]


# ---------------------------------------------------------------------------- neighbors


def test_nearest_neighbors_by_cosine():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(50, 16))
  ids = [7, 3, 42]
  # Scaled and slightly perturbed rows: cosine ignores the scale.
  prompt = table[ids] * np.array([[3.0], [0.1], [10.0]]) + 1e-3 * rng.normal(
      size=(3, 16))
  found, sims = neighbors.nearest(prompt, table, k=4)
  assert found.shape == (3, 4) and sims.shape == (3, 4)
  assert found[:, 0].tolist() == ids
  assert np.all(sims[:, 0] > 0.99) and np.all(np.diff(sims, axis=1) <= 0)
  exact = table / np.linalg.norm(table, axis=1, keepdims=True)
  expected = np.argsort(-(exact @ exact[ids].T).T, axis=1)[:, :4]
  assert found.tolist() == expected.tolist()
  with pytest.raises(ValueError, match="same width"):
    neighbors.nearest(prompt[:, :8], table)


def test_pieces_name_vocabulary_extra_ids_and_padding():
  from prompt_tuning.tiny import assets
  pieces = neighbors.Pieces(str(assets.VOCAB_PATH), extra_ids=100)
  base = pieces.base_size
  assert pieces.size == base + 100
  assert pieces(base + 99) == "<extra_id_0>" and pieces(base) == "<extra_id_99>"
  assert pieces(base + 100).startswith("<padding")
  assert pieces(pieces.processor.piece_to_id("▁person")) == "▁person"
  assert neighbors.Pieces(None)(5) == "<id 5>"


# ---------------------------------------------------------------------------- diff


def test_diff_statuses_and_frozen_check():
  a = {"encoder/x": np.ones((2, 3)), "decoder/y": np.zeros(4), "gone": np.ones(1),
       "reshaped": np.ones(2)}
  b = {"encoder/x": np.ones((2, 3)), "decoder/y": np.array([0, 0.5, 0, 0]),
       "encoder/prompt/prompt": np.ones((1, 3)), "reshaped": np.ones(3)}
  by_path = {d.path: d for d in diff.diff(a, b)}
  assert by_path["encoder/x"].status == "same"
  y = by_path["decoder/y"]
  assert (y.status, y.max_abs, y.frac_changed) == ("changed", 0.5, 0.25)
  assert y.rel_l2 == float("inf")  # changed from an all-zero tensor
  assert by_path["gone"].status == "only_a"
  assert by_path["encoder/prompt/prompt"].status == "only_b"
  assert by_path["reshaped"].status == "shape"
  s = diff.summary(list(by_path.values()), trainable=[r".*/prompt/.*"])
  assert s["changed_outside_trainable"] == ["decoder/y", "reshaped"]
  assert not s["frozen_unchanged"]
  assert diff.summary(list(by_path.values()), [r".*"])["frozen_unchanged"]
  assert diff.compare("p", np.ones(3), np.ones(3) + 1e-9, atol=1e-6).status == "same"
  table = diff.format_table(list(by_path.values()), only_differences=True)
  assert "decoder/y" in table and "encoder/x" not in table


# ---------------------------------------------------------------------------- plots


def _rows():
  rows = []
  for params in (1e6, 1e7, 1e8):
    for seed in (0, 1):
      for method, score in (("model_tuning", 80), ("prompt_design", 40)):
        rows.append({"method": method, "parameters": params, "seed": seed,
                     "best": score + seed, "metric": "accuracy", "task": "t",
                     "prompt_length": None, "init": None})
      for length in (1, 20):
        for init in ("class_labels", "random_uniform"):
          rows.append({"method": "prompt_tuning", "parameters": params, "seed": seed,
                       "best": 50 + length + seed, "metric": "accuracy", "task": "t",
                       "prompt_length": length, "init": init})
  return rows


def test_plots_write_pngs(tmp_path):
  rows = _rows()
  for path in (plots.scaling_plot(rows, str(tmp_path / "s.png"),
                                  where={"prompt_length": 20,
                                         "init": "class_labels"}),
               plots.ablation_plot(rows, str(tmp_path / "l.png"), "prompt_length"),
               plots.ablation_plot(rows, str(tmp_path / "i.png"), "init"),
               plots.ablation_plot([r for r in rows if r["parameters"] == 1e6],
                                   str(tmp_path / "l1.png"), "prompt_length"),
               plots.ablation_plot([r for r in rows if r["parameters"] == 1e6],
                                   str(tmp_path / "i1.png"), "init"),
               plots.methods_plot([r for r in rows if r["parameters"] == 1e6],
                                  str(tmp_path / "m.png"), baselines={"x": 3.0})):
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
  with pytest.raises(ValueError, match="No prompt_tuning rows"):
    plots.ablation_plot(rows, str(tmp_path / "x.png"), "init", method="prompt_tuning",
                        where={"method": "model_tuning"})


def test_filters_keep_rows_without_the_column():
  rows = _rows()
  kept = plots.filter_rows(rows, {"prompt_length": "20"})
  assert {r["method"] for r in kept} == {"model_tuning", "prompt_design",
                                         "prompt_tuning"}
  assert {r["prompt_length"] for r in kept} == {None, 20}


# ---------------------------------------------------------------------------- transfer


def test_transfer_table_means_and_delta():
  plan = transfer.Plan(source="src", targets=["mix"], model_gin_files=[],
                       output_dir="x", metrics=["accuracy"],
                       domains={"src": "in-domain", "t1": "far"})
  rows = []
  for seed, (m, p) in enumerate([(90.0, 70.0), (80.0, 72.0)]):
    rows += [{"task": "t1", "train_method": "model_tuning", "seed": seed,
              "accuracy": m - 40}, {"task": "t1", "train_method": "prompt_tuning",
                                    "seed": seed, "accuracy": p - 10},
             {"task": "src", "train_method": "model_tuning", "seed": seed,
              "accuracy": m}, {"task": "src", "train_method": "prompt_tuning",
                               "seed": seed, "accuracy": p}]
  table = transfer.transfer_table(rows, plan)
  assert [r["task"] for r in table] == ["src", "t1"]  # domain order first
  src, t1 = table
  assert src["model_tuning_accuracy"] == 85.0 and src["prompt_tuning_accuracy"] == 71.0
  assert src["delta_accuracy"] == pytest.approx(-14.0)
  assert t1["delta_accuracy"] == pytest.approx(61.0 - 45.0)
  assert t1["model_tuning_accuracy_std"] == pytest.approx(np.std([50, 40], ddof=1))
  md = transfer.format_markdown(table, ["accuracy"]).splitlines()
  assert md[0] == "| Dataset | Domain | Model | Prompt | Δ |"
  assert md[2] == "| `src` | in-domain | 85.0 ± 7.1 | 71.0 ± 1.4 | -14.0 |"
  assert md[3].endswith("| +16.0 |")


def test_presets_name_registered_tasks():
  import seqio
  import tasks  # pylint: disable=unused-import
  for name, preset in transfer.presets().items():
    for task in (preset.source,) + tuple(preset.targets) + tuple(preset.domains):
      assert seqio.get_mixture_or_task(task), (name, task)
    members = set()
    for target in preset.targets:
      members |= {t.name for t in seqio.get_mixture_or_task(target).tasks}
    assert set(preset.domains) <= members | {preset.source}, name


@pytest.mark.parametrize("name", ["tiny_ablations.yaml", "paper_figure1.yaml"])
def test_example_sweep_files_expand_to_existing_gin_files(name):
  path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "sweeps" / name
  s = sweep.load(str(path))
  assert len(s.runs) > 10
  for run in s.runs:
    for gin_file in run.run.gin_files:
      assert (cli.REPO_CONFIGS / gin_file).is_file(), (run.name, gin_file)
  methods = {r.method for r in s.runs}
  assert {"prompt_design", "prompt_tuning", "model_tuning"} <= methods


def test_preset_names_match_the_presets():
  assert tuple(transfer.presets()) == transfer.PRESET_NAMES
