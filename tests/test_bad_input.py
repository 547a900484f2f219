"""Bad input costs seconds: `python -m prompt_tuning.train` exits 1 with a message
naming the thing and the fix, before any training step (or, for data that is merely
too long, trains and reports how much was truncated).

The command-line cases share one tiny setup (the shared T5X tiny checkpoint and a
local JSONL task, as tests/test_e2e.py) and run as concurrent processes, each
stopping at its first error. Cases covered elsewhere (see docs/TROUBLESHOOTING.md):
prompt files of every wrong kind (tests/test_methods_initializers.py), missing
checkpoints and missing / misshaped tensors (tests/test_checkpoints_*.py), malformed
local data lines (tests/test_tasks_local.py), a MODEL_DIR of another run
(tests/test_trainer.py).
"""
import concurrent.futures
import json
import pathlib
from prompt_tuning import train as train_lib
from prompt_tuning.run_dir import layout
import sys

import gin
import numpy as np
import pytest

from conftest import T5X_TINY_CHECKPOINT, run_entry_point

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import trainer_testlib as tl  # pylint: disable=g-import-not-at-top,wrong-import-position

TASK = "tasks.local.register_local_task"


def _write_data(root: pathlib.Path):
  lines = [json.dumps({"inputs": f"the movie was {w}", "targets": l})
           for w, l in (("great", "positive"), ("awful", "negative"))] * 4
  (root / "train.jsonl").write_text("\n".join(lines) + "\n")
  (root / "validation.jsonl").write_text("\n".join(lines[:2]) + "\n")
  bad = lines[:2] + ['{"inputs": "no comma" "targets": "positive"}'] + lines[2:]
  (root / "broken.jsonl").write_text("\n".join(bad) + "\n")
  np.save(root / "prompt_5x4.npy", np.zeros((5, 4), np.float32))
  nan = np.zeros((3, 4), np.float32)
  nan[1, 2] = np.nan
  np.save(root / "prompt_nan.npy", nan)
  (root / "not_a_checkpoint").mkdir()
  (root / "not_a_checkpoint" / "notes.txt").write_text("hello")
  (root / "typo.gin").write_text("TrainConfig.log_period = 1\n"
                                 "TrainConfig.chekpoint_period = 5\n")


def _args(root: pathlib.Path, name: str, *extra):
  """A 2-step prompt-tuning command line on the tiny T5X checkpoint."""
  return [
      "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=methods/prompt_tuning.gin",
      "--gin_file=runs/prompt_finetune.gin", "--gin.t5_preset.emb_dim=4", "--gin.t5_preset.num_heads=2",
      "--gin.t5_preset.head_dim=2", "--gin.t5_preset.mlp_dim=8",
      "--gin.t5_preset.relative_attention_num_buckets=4",
      "--gin.t5_preset.relative_attention_max_distance=8",
      f"--gin.MIXTURE_OR_TASK_NAME=@{TASK}()",
      f"--gin.{TASK}.name='bad_input_sentiment'",
      f"--gin.{TASK}.train='{root / 'train.jsonl'}'",
      f"--gin.{TASK}.validation='{root / 'validation.jsonl'}'",
      f"--gin.{TASK}.labels=['negative', 'positive']",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      "--gin.PROMPT_LENGTH=3", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
      f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY_CHECKPOINT}'",
      f"--gin.MODEL_DIR='{root / name}'",
  ] + list(extra)


def _cases(root: pathlib.Path):
  return {
      "prompt_shape": _args(root, "prompt_shape", "--gin_file=prompts/from_file.gin",
                            f"--gin.PROMPT_FILE='{root / 'prompt_5x4.npy'}'"),
      "checkpoint_format": _args(
          root, "checkpoint_format",
          f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'not_a_checkpoint'}'"),
      "config_mismatch": _args(root, "config_mismatch", "--gin.t5_preset.emb_dim=8",
                               "--gin.t5_preset.num_heads=4"),
      # Random init (no checkpoint), a 128-row table, the 32,100-id T5 vocabulary.
      "vocab_too_large": _args(root, "vocab_too_large",
                               "--gin_file=prompts/random_uniform.gin",
                               "--gin.INITIAL_CHECKPOINT_PATH=None",
                               "--gin.t5_preset.vocab_size=128"),
      "unknown_task": _args(root, "unknown_task",
                            "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte_v10'"),
      "gin_typo_in_file": _args(root, "gin_typo_in_file",
                                f"--gin_file={root / 'typo.gin'}"),
      # Checked before the frozen model is read: the checkpoint does not even exist.
      "nan_prompt": _args(root, "nan_prompt", "--gin_file=prompts/from_file.gin",
                          f"--gin.PROMPT_FILE='{root / 'prompt_nan.npy'}'",
                          f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'missing'}'"),
      "malformed_jsonl": _args(root, "malformed_jsonl",
                               f"--gin.{TASK}.train='{root / 'broken.jsonl'}'"),
  }


def _run(args):
  return run_entry_point("prompt_tuning.train", args)


@pytest.fixture(scope="module")
def cli(tmp_path_factory, shared_fixtures):
  """{case: (root, CompletedProcess)} for every command line of `_cases`."""
  del shared_fixtures
  root = tmp_path_factory.mktemp("bad_input")
  _write_data(root)
  cases = _cases(root)
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {name: pool.submit(_run, args) for name, args in cases.items()}
    return {name: (root, f.result()) for name, f in futures.items()}


def _failed(cli, name):
  """The stderr of a case that must exit 1 before any training step."""
  root, proc = cli[name]
  assert proc.returncode == 1, proc.stderr[-4000:]
  model_dir = root / name
  assert not list(model_dir.glob("checkpoint_*")) if model_dir.exists() else True
  assert "Training " not in proc.stderr  # the trainer's last line before compiling
  # A user error: one line naming the problem, no traceback (issue 14).
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  lines = [l for l in proc.stderr.splitlines() if "prompt_tuning.train: error: " in l]
  assert len(lines) == 1, proc.stderr[-4000:]
  return lines[0]


def test_prompt_file_of_the_wrong_shape(cli):
  err = _failed(cli, "prompt_shape")
  root = cli["prompt_shape"][0]
  assert str(root / "prompt_5x4.npy") in err
  assert "shape [5, 4]; expected [3, 4]" in err and "PROMPT_LENGTH" in err
  # Before any frozen weight is read (issue 14: after 44 GB at XXL).
  assert "Loading the frozen model" not in cli["prompt_shape"][1].stderr


def test_prompt_file_with_nan_is_refused_before_the_checkpoint(cli):
  err = _failed(cli, "nan_prompt")
  root = cli["nan_prompt"][0]
  assert f"Prompt file {root / 'prompt_nan.npy'} holds 1 non-finite values" in err
  assert "rows [1]" in err
  assert "Loading the frozen model" not in cli["nan_prompt"][1].stderr


def test_checkpoint_of_an_unknown_format_lists_the_formats_tried(cli):
  err = _failed(cli, "checkpoint_format")
  assert "notes.txt" in err
  assert "Tried formats t5x, huggingface, native" in err


def test_config_inconsistent_with_the_checkpoint_names_both_values(cli):
  err = _failed(cli, "config_mismatch")
  assert "emb_dim: config has 8, checkpoint has 4" in err
  assert "num_heads: config has 4, checkpoint has 2" in err


def test_task_vocabulary_larger_than_the_embedding_table(cli):
  err = _failed(cli, "vocab_too_large")
  assert "has 32100 ids but the model's embedding table has 128 rows" in err
  assert "vocab_size is at least 32100" in err


def test_unknown_task_lists_close_matches_before_loading_the_model(cli):
  err = _failed(cli, "unknown_task")
  assert "'super_glue_rte_v10'" in err
  assert "Did you mean 'super_glue_rte_v102'" in err
  root, proc = cli["unknown_task"]
  assert "Loading the frozen model" not in proc.stderr  # before reading the checkpoint


def test_unknown_gin_binding_names_the_file_and_line(cli):
  err = _failed(cli, "gin_typo_in_file")
  root = cli["gin_typo_in_file"][0]
  assert "doesn't have a parameter named 'chekpoint_period'" in err
  assert f'In file "{root / "typo.gin"}", line 2' in err
  assert "Did you mean 'checkpoint_period'" in err


def test_malformed_local_data_names_file_and_line(cli):
  err = _failed(cli, "malformed_jsonl")
  root = cli["malformed_jsonl"][0]
  assert f"{root / 'broken.jsonl'}:3: not valid JSON" in err


# ------------------------------------------------------------------ in process


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_unknown_gin_flag_binding_is_named_with_close_matches(clean_gin):
  from prompt_tuning import cli as cli_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train  # pylint: disable=g-import-not-at-top,unused-import
  with pytest.raises(ValueError) as error:
    cli_lib.parse_gin(["models/t5_1_1_tiny.gin", "runs/prompt_finetune.gin"],
                      ["MODEL_DIR = '/tmp/x'", "TrainConfig.log_perod = 1"])
  message = str(error.value)
  assert "doesn't have a parameter named 'log_perod'" in message
  assert "In bindings string line 2" in message and "Did you mean 'log_period'" in message
  with pytest.raises(ValueError, match=r"(?s)No configurable.*Did you mean 'TrainConfig'"):
    cli_lib.parse_gin([], ["Trainconfig.log_period = 1"])


def test_unwritable_model_dir_fails_before_anything_else(tmp_path):
  from prompt_tuning.run_dir import lock as run_lock  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(run_lock.ModelDirError) as error:
    train_lib.build_and_train(tl.train_config(blocker / "run"), method=tl.partial_tuning(),
                  model_config=tl.tiny_config(), optimizer=tl.adam(),
                  batches_fn=tl.fixed_batches(8))
  assert str(blocker / "run") in str(error.value) and "--gin.MODEL_DIR" in str(error.value)


def _poisoned_batches(at_step: int):
  """`tl.fixed_batches(8)`, except that step `at_step` sees a token id far outside
  the embedding table: `jnp.take` fills its embedding with NaN, so the loss, the
  gradients and then the parameters are NaN (the step itself is not recompiled)."""
  base = tl.fixed_batches(8)

  def batches(start):
    for i, batch in enumerate(base(start)):
      if start + i + 1 == at_step:
        batch = dict(batch, encoder_input_tokens=batch["encoder_input_tokens"].copy())
        batch["encoder_input_tokens"][0, 0] = 10**6
      yield batch

  return batches


def test_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path):
  from prompt_tuning.run_dir import train_state  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "run"
  # Checkpoints every 2 steps; the loss of step 5 is NaN: 2 and 4 are good, and
  # nothing may be saved at 6 (the parameters are NaN after update 5).
  with pytest.raises(trainer.NonFiniteLossError) as error:
    train_lib.build_and_train(tl.train_config(model_dir, train_steps=8, checkpoint_period=2,
                                  log_period=1000, keep_checkpoints=5),
                  method=tl.partial_tuning(), model_config=tl.tiny_config(),
                  optimizer=tl.adam(), batches_fn=_poisoned_batches(5))
  message = str(error.value)
  assert error.value.step == 5 and "Training stopped at step 5: the loss is nan" in message
  assert error.value.last_checkpoint == 4
  assert f"{model_dir}/checkpoint_4 (step 4), is intact" in message
  assert "rerun the same command to resume from step 4" in message

  # Checkpoints 2 and 4 are intact and finite; nothing after them was written.
  checkpointer = train_state.StateCheckpointer(str(model_dir), keep=5)
  assert checkpointer.all_steps() == [2, 4]
  assert checkpointer.read_data(4)["batches_consumed"] == 4
  checkpointer.close()
  assert layout.numpy_steps(str(model_dir)) == [2, 4]
  exported = layout.read_arrays(str(
      layout.numpy_checkpoint_dir(str(model_dir), 4)))
  assert exported and all(np.all(np.isfinite(v)) for v in exported.values())


def test_parameters_are_checked_finite_before_every_save():
  # The save-time guard for an update that makes the parameters (not yet the loss)
  # NaN or infinite.
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  good = {"a": {"w": np.ones((2, 3), np.float32)}, "b": np.zeros(4, np.float32)}
  assert bool(trainer._all_finite(good))  # pylint: disable=protected-access
  for bad in (np.nan, np.inf, -np.inf):
    tree = {"a": {"w": np.ones((2, 3), np.float32)}, "b": np.array([0, bad, 0, 0],
                                                                    np.float32)}
    assert not bool(trainer._all_finite(tree))  # pylint: disable=protected-access


def _register_long_task(name="bad_input_long_inputs"):
  """tl's byte-vocabulary task, but every odd example's inputs exceed 12 tokens."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if name in seqio.TaskRegistry.names():
    return name

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    inputs = [f"say {i} " + ("and more words" if i % 2 else "") for i in range(16)]
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs,
                                               "targets": ["yes"] * 16})

  vocab = seqio.ByteVocabulary()
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={k: seqio.Feature(vocab, add_eos=True)
                       for k in ("inputs", "targets")})
  return name


def test_long_inputs_are_truncated_as_seqio_does_and_counted(tmp_path, caplog):
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  task = _register_long_task()
  # The token ids are exactly seqio.get_dataset's (same trimming, same order).
  ours = next(data.train_batches(task, tl.FEATURE_LENGTHS, 8, seed=1))
  theirs = next(seqio.get_dataset(task, tl.FEATURE_LENGTHS, data.feature_converter(),
                                  shuffle=True, seed=1, num_epochs=None,
                                  batch_size=8).as_numpy_iterator())
  for key in data.MODEL_FEATURES:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  lengths = (ours["encoder_input_tokens"] > 0).sum(axis=1)
  assert set(ours["truncated"][lengths == 12]) == {1}  # "say 9 and more words" …
  assert set(ours["truncated"][lengths < 12]) == {0}  # "say 8 " + EOS

  # Training counts them: unshuffled, steps 1 and 2 see each example once.
  model_dir = tmp_path / "run"
  with caplog.at_level("INFO"):
    train_lib.build_and_train(tl.train_config(model_dir, mixture_or_task_name=task,
                                  train_steps=2, log_period=1, shuffle=False),
                  method=tl.partial_tuning(), model_config=tl.tiny_config(),
                  optimizer=tl.adam())
  assert "4 of 8 training examples so far were longer than TASK_FEATURE_LENGTHS" \
      in caplog.text
  assert "8 of 16 training examples so far" in caplog.text
  values = {}
  for path in (model_dir / "train").glob("events.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for v in event.summary.value:
        if v.tag == "truncated_examples":
          values[event.step] = float(tf.make_ndarray(v.tensor))
  assert values == {1: 4.0, 2: 8.0}


def test_evaluation_cuts_long_inputs_like_seqio_and_reports_them(caplog):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import evaluation  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top
  name = _register_long_task()
  task = seqio.get_mixture_or_task(name)
  examples = data.eval_examples(task, tl.FEATURE_LENGTHS, split="train")
  assert examples.num_truncated == 8  # the odd examples
  # What is evaluated is exactly seqio's trimmed dataset, in order.
  theirs = list(task.get_dataset(tl.FEATURE_LENGTHS, split="train", shuffle=False,
                                 num_epochs=1).as_numpy_iterator())
  assert len(theirs) == len(examples.raw) == 16
  for ours, ref in zip(examples.raw, theirs):
    np.testing.assert_array_equal(ours["inputs"], ref["inputs"])
    assert "truncated" not in ours

  model = Transformer(tl.tiny_config())
  tokens = np.ones((2, 4), np.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
  evaluator = evaluation.Evaluator(model, None, None, name, tl.FEATURE_LENGTHS,
                                   batch_size=8, split="train", decode=False)
  assert evaluator.examples is None  # nothing is read before the first evaluation
  with caplog.at_level("WARNING"):
    metrics = evaluator.evaluate(params)[name].metrics
  assert ("8 of 16 bad_input_long_inputs/train examples are longer than "
          "TASK_FEATURE_LENGTHS") in caplog.text
  assert metrics["num_truncated"] == 8 and metrics["num_examples"] == 16


def test_text_cut_by_append_eos_after_trim_is_counted(tmp_path, t5_vocab_path,
                                                      monkeypatch):
  # T5-style tasks trim inside a preprocessor (append_eos_after_trim), before the
  # final trim ever sees a long sequence; the flag still finds them.
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  from tasks import local, vocab  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(vocab.ENV_VAR, t5_vocab_path)
  words = [2, 30, 6, 7, 5, 40]  # "word" is one T5 token: 7 + EOS fills inputs=8
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps({"inputs": "word " * n, "targets": "yes"}) + "\n"
                          for n in words))
  name = local.register_local_task("bad_input_truncation", train=str(path))
  batch = next(data.train_batches(name, {"inputs": 8, "targets": 4}, 6,
                                  shuffle=False))
  assert batch["truncated"].tolist() == [int(n > 7) for n in words]
  assert batch["encoder_input_tokens"][1, -1] == 1  # cut to 7 tokens + EOS
