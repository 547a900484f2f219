"""`python -m prompt_tuning.demo`, shortened (a few steps, a small eval), end to end."""
import json
import shlex

import numpy as np
import pytest

from prompt_tuning import cli, demo


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  summary = demo.main(["--output_dir", str(out), "--train_steps", "6",
                       "--eval_period", "3", "--max_eval_examples", "40",
                       "--inits", "class_labels"])
  return out, summary


def test_writes_table_prompt_curve_and_metrics(short_demo, capsys):
  out, summary = short_demo
  on_disk = json.loads((out / "results.json").read_text())
  assert on_disk["task"] == "taskless_tiny_sentiment"
  names = [row["name"] for row in on_disk["table"]]
  assert names == ["no_prompt", "prompt_design", "prompt_tuning_class_labels"]
  prompt = np.load(out / "prompt_class_labels.npy")
  assert prompt.shape == (10, 128) and np.isfinite(prompt).all()
  assert on_disk["table"][2]["trained_parameters"] == prompt.size
  assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  curve = on_disk["runs"]["prompt_tuning_class_labels"]["eval_curve"]
  assert [p["step"] for p in curve] == [3, 6]
  assert summary["table"][2]["accuracy"] == curve[-1]["accuracy"]
  design = summary["table"][1]["accuracy"]
  assert summary["percent_of_prompt_design"]["prompt_tuning_class_labels"] == (
      pytest.approx(100.0 * curve[-1]["accuracy"] / design, abs=0.05))


def test_multitask_bank_is_trained_and_scored_per_task(short_demo, capsys):
  out, summary = short_demo
  multitask = json.loads((out / "results.json").read_text())["multitask"]
  assert multitask == json.loads(json.dumps(summary["multitask"]))
  assert multitask["mixture"] == "taskless_tiny_sentiment_topic"
  assert multitask["bank_shape"] == [2, 10, 128]
  assert multitask["trained_parameters"] == 2 * 10 * 128
  bank = np.load(out / "runs" / "multitask" / "best" / "encoder.prompt.prompts.npy")
  assert bank.shape == (2, 10, 128) and np.isfinite(bank).all()
  rows = {row["task"]: row for row in multitask["tasks"]}
  assert list(rows) == ["sentiment", "topic"]
  assert rows["sentiment"]["chance"] == 50.0 and rows["topic"]["chance"] == 25.0
  # Sentiment's prompt design is the single-task table's own row (same eval).
  assert rows["sentiment"]["prompt_design"] == summary["table"][1]["accuracy"]
  for row in rows.values():  # each task evaluated with its own prompt, every period
    assert [p["step"] for p in row["eval_curve"]] == [3, 6]
    assert row["accuracy"] == row["eval_curve"][-1]["accuracy"]
  table = demo.format_multitask_table(multitask)
  assert "2 prompts x 10 x 128" in table
  assert table.count("\n") == 5  # title, header, rule, two tasks, parameters


def test_multitask_can_be_left_out(tmp_path):
  args = demo.parse_args(["--output_dir", str(tmp_path), "--no-multitask"])
  assert not args.multitask
  assert demo.parse_args(["--output_dir", str(tmp_path)]).multitask


def test_leaves_no_gin_binding_behind(short_demo):
  import gin  # pylint: disable=g-import-not-at-top
  import tasks  # pylint: disable=g-import-not-at-top
  del short_demo
  assert "tiny_t5" not in gin.config_str()
  assert "tiny_t5" not in tasks.vocabulary_path()


def test_frozen_weights_are_unchanged_and_checked(short_demo):
  _, summary = short_demo
  assert summary["frozen_unchanged"]
  assert summary["frozen_sha256_before"] == summary["frozen_sha256_after"]
  assert summary["frozen_sha256_after"] == demo.frozen_checksum()


def test_the_frozen_model_needs_the_task_word(short_demo):
  _, summary = short_demo
  by_name = {row["name"]: row["accuracy"] for row in summary["table"]}
  assert by_name["prompt_design"] >= 95.0  # the skill is there with its task word
  assert by_name["no_prompt"] <= summary["chance"] + 10.0  # not without it
  rows = {row["name"]: row for row in summary["table"]}
  # Without a task word it continues the text instead of answering with a label.
  assert rows["no_prompt"]["not_a_label"] >= 90.0
  assert rows["prompt_design"]["not_a_label"] == 0.0


def test_printed_commands_are_the_entry_points_flags(tmp_path):
  args = demo.parse_args(["--output_dir", str(tmp_path), "--train_steps", "7"])
  runs = demo.build_runs(args, tmp_path)
  assert [r.entry for r in runs] == ["eval", "eval", "train", "train", "train"]
  multitask = demo.build_multitask_runs(args, tmp_path)
  assert [r.entry for r in multitask] == ["eval", "eval", "train"]
  assert [r.name for r in demo.build_multitask_runs(args, tmp_path, ["sentiment"])] == [
      "prompt_design_topic", "multitask"]
  assert "methods/multitask_prompt_tuning.gin" in multitask[-1].gin_files
  for run in runs + multitask:
    argv = shlex.split(run.command())
    assert argv[:3] == ["python", "-m", f"prompt_tuning.{run.entry}"]
    flags = cli.rewrite_gin_args(argv[3:])
    files = [f.split("=", 1)[1] for f in flags if f.startswith("--gin_file=")]
    bindings = [f.split("=", 1)[1] for f in flags if f.startswith("--gin_bindings=")]
    assert files == run.gin_files
    assert bindings == run.bindings
    assert "TRAIN_STEPS = 7" in bindings
    for name in files:
      assert (cli.REPO_CONFIGS / name).is_file(), name


def test_multitask_run_is_the_documented_walkthrough_command(tmp_path):
  from test_gin_structure import documented_commands  # pylint: disable=g-import-not-at-top
  (documented,) = [argv for doc, entry, argv in documented_commands()
                   if doc == "TRAINING.md" and entry == "train"
                   and "--gin_file=methods/multitask_prompt_tuning.gin" in argv]
  args = demo.parse_args(["--output_dir", str(tmp_path)])
  run = demo.build_multitask_runs(args, tmp_path)[-1]
  flags = cli.rewrite_gin_args(shlex.split(run.command())[3:])
  files = [f.split("=", 1)[1] for f in flags if f.startswith("--gin_file=")]
  assert files == [a.split("=", 1)[1] for a in documented
                   if a.startswith("--gin_file=")]  # same files, same order
  documented_bindings = " ".join(documented)
  assert "PROMPT_LENGTH=10" in documented_bindings
  assert f"MIXTURE_OR_TASK_NAME='{demo.MIXTURE}'" in documented_bindings
  assert f"PROMPT_LENGTH = {demo.PROMPT_LENGTH}" in run.bindings


def test_rejects_a_task_without_labels(tmp_path):
  args = demo.parse_args(["--output_dir", str(tmp_path), "--task", "count"])
  with pytest.raises(ValueError, match="classification task"):
    demo.build_runs(args, tmp_path)
