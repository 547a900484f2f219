"""Command-line layer: --gin.X flags, search paths, run gins, required macros."""
import gin
import optax
import pytest
from absl import app

from prompt_tuning import cli, configurables
from prompt_tuning import eval as eval_lib
from prompt_tuning import train as train_lib

REQUIRED = {
    "MODEL_DIR": "'/tmp/run'",
    "MIXTURE_OR_TASK_NAME": "'my_task'",
    "TASK_FEATURE_LENGTHS": "{'inputs': 512, 'targets': 8}",
    "INITIAL_CHECKPOINT_PATH": "None",
}


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _bindings(skip=()):
  return [f"{k} = {v}" for k, v in REQUIRED.items() if k not in skip]


def test_gin_dot_flags_become_bindings():
  argv = ["prog", "--gin_file=runs/prompt_finetune.gin", "--gin.TRAIN_STEPS=10",
          "--gin.MODEL_DIR='/tmp/a=b'", "--other=1"]
  assert cli.rewrite_gin_args(argv) == [
      "prog", "--gin_file=runs/prompt_finetune.gin", "--gin_bindings=TRAIN_STEPS = 10",
      "--gin_bindings=MODEL_DIR = '/tmp/a=b'", "--other=1"]
  with pytest.raises(app.UsageError, match="--gin.NAME=VALUE"):
    cli.rewrite_gin_args(["prog", "--gin.TRAIN_STEPS"])


def test_prompt_finetune_gin_has_the_papers_settings(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # found through the search paths, not the cwd
  cli.parse_gin(["models/t5_1_1_base.gin", "methods/prompt_tuning.gin",
                 "prompts/class_labels.gin", "runs/prompt_finetune.gin"], _bindings())
  assert cli.missing_macros(cli.TRAIN_MACROS) == []
  config = configurables.TrainConfig()
  assert (config.train_steps, config.batch_size, config.eval_period) == (30000, 32, 1000)
  assert config.checkpoint_period == 1000 and config.z_loss == 1e-4
  assert config.loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS"
  assert config.model_dir == "/tmp/run" and config.mixture_or_task_name == "my_task"
  method = cli.macro("METHOD")
  assert method.name == "prompt" and method.prompt.length == 100
  assert method.trainable == (r".*/prompt/.*",)
  assert isinstance(cli.macro("OPTIMIZER"), optax.GradientTransformation)
  assert gin.query_parameter("optim.adafactor_prompt_tuning.learning_rate") == 0.3
  assert cli.macro("MODEL_CONFIG").emb_dim == 768
  assert cli.macro("MODEL_CONFIG").dropout_rate == 0.1


def test_model_finetune_gin_trains_everything():
  cli.parse_gin(["models/t5_1_1_small.gin", "methods/model_tuning.gin",
                 "runs/model_finetune.gin"], _bindings())
  assert cli.macro("METHOD").trainable == (".*",)
  assert gin.query_parameter("optim.adafactor_model_tuning.learning_rate") == 1e-3
  assert configurables.TrainConfig().train_steps == 30000


def test_missing_required_macro_names_it_and_the_flag_to_add():
  cli.parse_gin(["models/t5_1_1_base.gin", "runs/prompt_finetune.gin"],
                _bindings(skip=("MODEL_DIR", "TASK_FEATURE_LENGTHS")))
  with pytest.raises(app.UsageError) as error:
    cli.check_required_macros(cli.TRAIN_MACROS)
  message = str(error.value)
  assert "MODEL_DIR: add --gin.MODEL_DIR=" in message
  assert "TASK_FEATURE_LENGTHS: add --gin.TASK_FEATURE_LENGTHS=" in message
  assert "MIXTURE_OR_TASK_NAME" not in message
  # The run gin chooses no method: the message says which file provides it.
  assert "METHOD: add a method gin, e.g. --gin_file=methods/prompt_tuning.gin" in message


def test_eval_gin_binds_evaluate_and_unknown_gin_file_is_named():
  cli.parse_gin(["models/t5_1_1_tiny.gin", "methods/prompt_tuning.gin",
                 "runs/prompt_eval.gin"], _bindings())
  cli.check_required_macros(eval_lib.EVAL_MACROS)
  assert gin.query_parameter("evaluate.checkpoint") == "best"
  assert cli.macro("EVAL_SPLIT") == "validation" and cli.macro("PROMPT_LENGTH") == 100
  with pytest.raises(FileNotFoundError, match="runs/no_such.gin"):
    cli.parse_gin(["runs/no_such.gin"])


def test_script_parser_takes_its_help_from_the_docstring():
  doc = "Does one thing.\n\n  python scripts/x.py --n 3   # an example\n"
  parser = cli.script_parser("scripts/x.py", doc)
  parser.add_argument("--n", type=int)
  text = parser.format_help()
  assert text.startswith("usage: scripts/x.py")
  assert "Does one thing." in text
  assert "  python scripts/x.py --n 3   # an example" in text  # kept as written
  assert cli.script_parser("scripts/y.py", "Only a summary.").epilog is None


@pytest.mark.parametrize("binding, expected", [
    (None, (r".*/prompt/.*",)),
    ("optim.trainable_regexes.regexes = ['.*/prompt/.*', 'decoder/decoder_norm/.*']",
     (r".*/prompt/.*", "decoder/decoder_norm/.*")),
])
def test_trainable_regexes_binding_reaches_the_trained_method(monkeypatch, binding,
                                                              expected):
  bindings = _bindings() + ([binding] if binding else [])
  cli.parse_gin(["models/t5_1_1_tiny.gin", "methods/prompt_tuning.gin",
                 "runs/prompt_finetune.gin"], bindings)
  seen = {}

  def fake_build_and_train(config, *, method, **kwargs):
    del config, kwargs
    seen["trainable"] = method.trainable

  monkeypatch.setattr(train_lib, "build_and_train", fake_build_and_train)
  train_lib.train()
  assert seen["trainable"] == expected
