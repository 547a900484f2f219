"""A run's identity (issue 14, item 2): config.json records the whole method, the
optimizer, local data fingerprints and the process count; eval rebuilds the method
from it with no flag repeated; a contradicting flag or a changed restart is refused
before anything in MODEL_DIR is written."""
import json
import pathlib

import pytest

from prompt_tuning.run_dir import identity as run_identity
from prompt_tuning.run_dir import layout
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.research.runs import GinRun, binding

MODEL = "models/tiny_bundled.gin"
TASK = "tasks.local.register_local_task"


def _write_data(root: pathlib.Path, flip: bool = False):
  rows = [("great", "positive"), ("awful", "negative")] * 6
  if flip:
    rows = rows[::-1]
  text = "".join(json.dumps({"inputs": f"the film was {w}", "targets": l}) + "\n"
                 for w, l in rows)
  (root / "train.jsonl").write_text(text)
  (root / "validation.jsonl").write_text(text)


def _bindings(root, model_dir, *extra):
  return [binding("MODEL_DIR", str(model_dir)),
          f"MIXTURE_OR_TASK_NAME = @{TASK}()",
          binding(f"{TASK}.name", "identity_sentiment"),
          binding(f"{TASK}.train", str(root / "train.jsonl")),
          binding(f"{TASK}.validation", str(root / "validation.jsonl")),
          binding(f"{TASK}.labels", ["negative", "positive"]),
          binding("TASK_FEATURE_LENGTHS", {"inputs": 12, "targets": 3}),
          "TRAIN_STEPS = 2", "BATCH_SIZE = 4", "EVAL_PERIOD = -1",
          "CHECKPOINT_PERIOD = 2", "PROMPT_LENGTH = 3", "EVAL_BATCH_SIZE = 4",
          "MAX_EVAL_EXAMPLES = 4", *extra]


def _train_run(root, model_dir, *extra, method="methods/prompt_tuning.gin"):
  return GinRun("train", [MODEL, method, "prompts/random_uniform.gin",
                          "runs/prompt_finetune.gin"], _bindings(root, model_dir, *extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("identity")
  _write_data(root)
  model_dir = root / "run"
  result = _train_run(root, model_dir).run_in_process()
  assert result.step == 2
  return root, model_dir


def _snapshot(model_dir):
  return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in
          (model_dir / "config.gin", model_dir / "config.json", model_dir / "run.lock")}


def test_config_json_records_the_whole_method_optimizer_data_and_processes(trained):
  root, model_dir = trained
  record = json.loads((model_dir / "config.json").read_text())
  spec = record["method_spec"]
  assert spec["factory"] == "methods.prompt_tuning"
  assert spec["arguments"]["length"] == 3 and spec["arguments"]["combine"] == "prefix"
  assert spec["arguments"]["initializer"]["factory"] == "prompt_init.random_uniform"
  assert spec["arguments"]["initializer"]["arguments"]["minval"] == -0.5
  assert record["optimizer_spec"]["factory"] == "optim.adafactor_prompt_tuning"
  assert record["optimizer_spec"]["arguments"]["learning_rate"] == 0.3
  data = record["data_fingerprints"]["identity_sentiment"]
  assert data["train"]["path"] == str(root / "train.jsonl")
  assert len(data["train"]["sha256"]) == 64
  assert record["process_count"] == 1


def test_eval_rebuilds_the_method_without_repeating_flags(trained, tmp_path,
                                                         monkeypatch):
  root, model_dir = trained
  from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
  # The tasks' vocabulary (models/tiny_bundled.gin binds it; no model gin here).
  monkeypatch.setenv("PROMPT_TUNING_VOCAB", str(assets.VOCAB_PATH))
  run = GinRun("eval", ["runs/prompt_eval.gin"], [
      binding("MODEL_DIR", str(model_dir)),
      f"MIXTURE_OR_TASK_NAME = @{TASK}()",
      binding(f"{TASK}.name", "identity_sentiment"),
      binding(f"{TASK}.validation", str(root / "validation.jsonl")),
      binding(f"{TASK}.train", str(root / "train.jsonl")),
      binding(f"{TASK}.labels", ["negative", "positive"]),
      binding("TASK_FEATURE_LENGTHS", {"inputs": 12, "targets": 3}),
      "EVAL_BATCH_SIZE = 4", "MAX_EVAL_EXAMPLES = 4",
      binding("EVAL_OUTPUT_DIR", str(tmp_path))])
  results = run.run_in_process()  # P = 3 from config.json, no PROMPT_LENGTH flag
  assert "identity_sentiment" in results
  # A method gin whose P contradicts the record: both values named.
  contradicting = GinRun("eval", ["methods/prompt_tuning.gin"] + list(run.gin_files),
                         run.bindings)
  with pytest.raises(run_identity.IdentityMismatchError,
                     match=r"methods.prompt_tuning.length: given 100, recorded 3"):
    contradicting.run_in_process()


@pytest.mark.parametrize("change,expected", [
    (("methods.prompt_tuning.combine = 'suffix'",),
     "methods.prompt_tuning.combine: given 'suffix', recorded 'prefix'"),
    (("PROMPT_LENGTH = 20",), "methods.prompt_tuning.length: given 20, recorded 3"),
    (("OPTIMIZER = @optim.adamw_lopa()",), "optimizer: given optim.adamw_lopa, recorded optim.adafactor_prompt_tuning"),
])
def test_a_restart_that_changes_the_run_is_refused_before_writing(trained, change,
                                                                  expected):
  root, model_dir = trained
  before = _snapshot(model_dir)
  with pytest.raises(ckpt.RunIdentityError) as error:
    _train_run(root, model_dir, *change, "TRAIN_STEPS = 4").run_in_process()
  assert expected in str(error.value)
  assert "Nothing was written" in str(error.value)
  assert _snapshot(model_dir) == before  # config.gin, config.json, run.lock untouched


def test_a_restart_on_another_process_count_resumes(tmp_path):
  """The data stream depends on the global step only (test_global_stream), so a
  record from a 2-process start does not stop a 1-process resume."""
  root = tmp_path
  _write_data(root)
  model_dir = root / "run"
  assert _train_run(root, model_dir).run_in_process().step == 2
  path = model_dir / "config.json"
  record = json.loads(path.read_text())
  path.write_text(json.dumps(dict(record, process_count=2)))
  assert _train_run(root, model_dir, "TRAIN_STEPS = 4").run_in_process().step == 4
  assert json.loads(path.read_text())["process_count"] == 2  # the start's, as recorded


def test_resuming_with_a_different_local_data_file_is_refused(trained, tmp_path):
  root, model_dir = trained
  other = tmp_path / "other"
  other.mkdir()
  _write_data(other, flip=True)
  before = _snapshot(model_dir)
  run = _train_run(root, model_dir, binding(f"{TASK}.train",
                                            str(other / "train.jsonl")))
  with pytest.raises(ckpt.RunIdentityError,
                     match=r"data identity_sentiment/train: .*other/train.jsonl"):
    run.run_in_process()
  assert _snapshot(model_dir) == before


def test_an_in_process_run_stopped_by_sigterm_raises_and_resumes(tmp_path, monkeypatch):
  """A training run stopped by SIGTERM (the preemption flag set after step 1) raises
  errors.Preempted from run_in_process, as the command exits non-zero, so a sweep or
  replication stops instead of reading the partial run as finished; rerun, it resumes."""
  from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  _write_data(tmp_path)
  model_dir = tmp_path / "run"
  with monkeypatch.context() as m:
    m.setattr(trainer._Preemption, "reached",  # pylint: disable=protected-access
              lambda self, step: step >= 1)
    with pytest.raises(errors.Preempted, match="at step 1"):
      _train_run(tmp_path, model_dir).run_in_process()
  assert (model_dir / "numpy_checkpoints" / "checkpoint_1").is_dir()
  assert _train_run(tmp_path, model_dir).run_in_process().step == 2


def test_bundled_model_paths_name_the_asset_not_the_checkout():
  from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
  moved = "/old/clone/prompt_tuning/assets/tiny_t5/checkpoint"
  assert assets.bundled_name(moved) == "tiny_t5/checkpoint"
  assert assets.bundled_name(str(assets.CHECKPOINT_PATH)) == "tiny_t5/checkpoint"
  assert assets.bundled_name("/models/t5_small/checkpoint_100") is None
  assert assets.bundled_name("gs://b/prompt_tuning/assets/tiny_t5/checkpoint") is None
  assert assets.same_model_path(moved, str(assets.CHECKPOINT_PATH))
  assert not assets.same_model_path(moved, "/old/clone/prompt_tuning/assets/other")
  assert not assets.same_model_path("/a/checkpoint_1", "/b/checkpoint_1")
  # A moved (gone) checkout's asset is read from this installation; other paths and
  # paths that still exist are left alone.
  assert assets.locate(moved) == str(assets.CHECKPOINT_PATH)
  assert assets.locate("/models/missing") == "/models/missing"
  assert assets.locate(None) is None
  record = {"initial_checkpoint_path": moved, "seed": 0}
  here = dict(record, initial_checkpoint_path=str(assets.CHECKPOINT_PATH))
  assert run_identity.differences(record, here) == []
  other = dict(record, initial_checkpoint_path="/models/t5_small/checkpoint_100")
  assert run_identity.differences(record, other)[0].startswith(
      "initial_checkpoint_path: ")


def test_a_run_of_a_moved_checkout_resumes_and_finds_its_model_unless_it_changed(
    tmp_path, monkeypatch):
  """config.json records the bundled model by the absolute path of the checkout
  that started the run; the same asset elsewhere is the same model (resume and
  reading its frozen model go on), while a changed model fingerprint is refused."""
  from prompt_tuning.research import model_dirs  # pylint: disable=g-import-not-at-top
  _write_data(tmp_path)
  model_dir = tmp_path / "run"
  assert _train_run(tmp_path, model_dir).run_in_process().step == 2
  path = model_dir / "config.json"
  record = json.loads(path.read_text())
  moved = "/gone/clone/prompt_tuning/assets/tiny_t5/checkpoint"
  path.write_text(json.dumps(dict(record, initial_checkpoint_path=moved)))
  _, frozen = model_dirs.frozen_params(moved)  # read from this installation
  assert "token_embedder/embedding" in frozen
  assert _train_run(tmp_path, model_dir, "TRAIN_STEPS = 3").run_in_process().step == 3
  # The bundled model rebuilt since the run started: its embedding differs.
  fp = model_dir / "model_fingerprint.json"
  stored = json.loads(fp.read_text())
  fp.write_text(json.dumps(dict(stored, embedding=dict(stored["embedding"],
                                                       sha256="0" * 64))))
  before = _snapshot(model_dir)
  with pytest.raises(ckpt.RunIdentityError, match=r"differs from it in embedding"):
    _train_run(tmp_path, model_dir, "TRAIN_STEPS = 4").run_in_process()
  after = _snapshot(model_dir)  # the run's lock was taken (and released) …
  assert {k: after[k] for k in ("config.gin", "config.json")} == {
      k: before[k] for k in ("config.gin", "config.json")}  # … nothing else written
  assert layout.latest_step(model_dir) == 3  # no step trained on the other model
  assert json.loads(fp.read_text())["embedding"]["sha256"] == "0" * 64  # kept


def test_a_longer_run_continuing_a_finished_one_equals_training_it_from_scratch(
    trained, tmp_path):
  """`train_state.continue_finished` (replicate.py's budget doubling): the data
  stream and the dropout keys depend on the global step only and the optimizer
  state is restored, so 2 steps continued to 4 give the parameters of 4 steps."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  root, short = trained
  continued, fresh = tmp_path / "continued", tmp_path / "fresh"
  ckpt.continue_finished(str(short), str(continued))
  assert not (continued / "complete.json").exists()
  assert layout.latest_step(continued) == 2  # the resume starts at the short end
  assert _train_run(root, continued, "TRAIN_STEPS = 4").run_in_process().step == 4
  assert _train_run(root, fresh, "TRAIN_STEPS = 4").run_in_process().step == 4
  a, b = ckpt.read_trainable(continued), ckpt.read_trainable(fresh)
  assert sorted(a) == sorted(b) == ["encoder/prompt/prompt"]
  assert not np.array_equal(a["encoder/prompt/prompt"],
                            ckpt.read_trainable(short)["encoder/prompt/prompt"])
  np.testing.assert_allclose(a["encoder/prompt/prompt"], b["encoder/prompt/prompt"],
                             rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="is not empty"):
    ckpt.continue_finished(str(short), str(fresh))


def test_continuing_is_refused_for_unfinished_runs_and_length_bound_schedules(
    trained, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  _, short = trained
  bound = tmp_path / "bound"
  shutil.copytree(short, bound)
  path = bound / "config.json"
  record = json.loads(path.read_text())
  spec = record["optimizer_spec"]
  spec["arguments"]["total_steps"] = 2
  path.write_text(json.dumps(record))
  with pytest.raises(ValueError, match=r"depends on its length \(total_steps = 2\)"):
    ckpt.continue_finished(str(bound), str(tmp_path / "a"))
  (bound / "complete.json").write_text(json.dumps({"step": 1, "early_stopped": True}))
  with pytest.raises(ValueError, match="early stopping"):
    ckpt.continue_finished(str(bound), str(tmp_path / "b"))
  (bound / "complete.json").unlink()
  with pytest.raises(ValueError, match="did not finish"):
    ckpt.continue_finished(str(bound), str(tmp_path / "c"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_continuing_a_run_another_process_just_started_is_refused(trained, tmp_path,
                                                                  monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  _, short = trained
  target = tmp_path / "longer"
  copy = shutil.copytree

  def racing_copytree(src, dst, *args, **kwargs):
    out = copy(src, dst, *args, **kwargs)
    if pathlib.Path(dst).parent == tmp_path:  # the top call, not its recursion
      target.mkdir()  # the other process's run appears while this one copies
      (target / "config.json").write_text("{}")
    return out

  monkeypatch.setattr(ckpt.shutil, "copytree", racing_copytree)
  with pytest.raises(ValueError, match="started by another process"):
    ckpt.continue_finished(str(short), str(target))
  assert [p.name for p in tmp_path.iterdir()] == ["longer"]  # no staging left
  assert (target / "config.json").read_text() == "{}"
