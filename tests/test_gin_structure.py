"""Gin structure (issue 14, item 1): one method per run, in any documented order.

Run gins never include a method gin or set a method argument; METHOD and OPTIMIZER
come from one method gin (or a flag); a second method gin is an error naming both
files; unknown macros in flags get a "did you mean"; every command line in the
README and docs/ parses and binds the method it names.
"""
import importlib
import pathlib
import re
import shlex

import gin
import pytest

from prompt_tuning import cli, gin_structure
from prompt_tuning.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BASE = ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'my_task'",
        "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}",
        "INITIAL_CHECKPOINT_PATH = None"]


@pytest.fixture(autouse=True)
def clean_gin():
  importlib.import_module("prompt_tuning.train")
  importlib.import_module("prompt_tuning.eval")
  importlib.import_module("prompt_tuning.infer")
  gin.clear_config()
  yield
  gin.clear_config()


def _method() -> str:
  """The selector METHOD refers to, e.g. 'methods.lopa'."""
  return gin.query_parameter("METHOD/macro.value").configurable.selector


# ------------------------------------------------------------------ the case


@pytest.mark.parametrize("order", [
    ["models/t5_1_1_base.gin", "methods/lopa.gin", "prompts/class_labels.gin",
     "runs/prompt_finetune.gin"],  # docs/METHODS.md's order
    ["models/t5_1_1_base.gin", "runs/prompt_finetune.gin", "methods/lopa.gin",
     "prompts/class_labels.gin"],
    ["runs/prompt_finetune.gin", "prompts/class_labels.gin", "methods/lopa.gin",
     "models/t5_1_1_base.gin"],
])
def test_the_method_gin_decides_the_method_in_any_order(order):
  cli.parse_gin(order, BASE)
  assert _method() == "methods.lopa"
  assert gin.query_parameter("PROMPT_LENGTH/macro.value") == 10  # LoPA's, not 100
  assert cli.missing_macros(cli.TRAIN_MACROS) == []
  method = cli.macro("METHOD")
  assert method.name == "lopa" and method.prompt.length == 10


def test_a_second_method_gin_is_an_error_naming_both_files():
  with pytest.raises(gin_structure.MethodConflictError) as error:
    cli.parse_gin(["models/t5_1_1_base.gin", "methods/prompt_tuning.gin",
                   "runs/prompt_finetune.gin", "methods/lopa.gin"], BASE)
  message = str(error.value)
  assert "methods/prompt_tuning.gin" in message and "methods/lopa.gin" in message
  assert isinstance(error.value, UserError)


def test_a_run_gin_of_ones_own_that_includes_a_method_is_named(tmp_path):
  own = tmp_path / "my_run.gin"
  own.write_text("include 'runs/prompt_finetune.gin'\n"
                 "include 'methods/prompt_tuning.gin'\nTRAIN_STEPS = 5\n")
  with pytest.raises(gin_structure.MethodConflictError,
                     match=r"my_run.gin \(through its include of "
                           r"methods/prompt_tuning.gin\).*later methods/lopa.gin"):
    cli.parse_gin([str(own), "methods/lopa.gin"], BASE)


def test_the_same_method_gin_twice_and_a_method_flag_are_allowed():
  cli.parse_gin(["methods/prefix_tuning.gin", "runs/prompt_finetune.gin",
                 "methods/prefix_tuning.gin"], BASE)
  assert _method() == "methods.prefix_tuning"
  gin.clear_config()
  cli.parse_gin(["methods/prompt_tuning.gin", "runs/prompt_finetune.gin"],
                BASE + ["METHOD = @methods.lopa()"])
  assert _method() == "methods.lopa"


def test_ordinary_overrides_work_as_in_t5x(tmp_path):
  later = tmp_path / "later.gin"
  later.write_text("TRAIN_STEPS = 77\nBATCH_SIZE = 8\n")
  cli.parse_gin(["models/t5_1_1_base.gin", "methods/prompt_tuning.gin",
                 "runs/prompt_finetune.gin", str(later)],
                BASE + ["BATCH_SIZE = 4", "PROMPT_LENGTH = 20"])
  config = cli.macro("TRAIN_STEPS"), cli.macro("BATCH_SIZE")
  assert config == (77, 4)
  assert cli.macro("METHOD").prompt.length == 20


def test_a_run_without_a_method_gin_names_the_missing_method():
  cli.parse_gin(["models/t5_1_1_base.gin", "runs/prompt_finetune.gin"], BASE)
  with pytest.raises(cli.MissingMacrosError,
                     match="METHOD: add a method gin, e.g. --gin_file=methods/"):
    cli.check_required_macros(cli.TRAIN_MACROS)


def test_run_gins_choose_no_method_and_prompt_length_has_one_kind_of_home():
  for path in sorted((CONFIGS / "runs").glob("*.gin")):
    text = path.read_text()
    code = "\n".join(l.split("#")[0] for l in text.splitlines())
    assert not re.search(r"include\s+'methods/", code), path
    assert not re.search(r"^\s*(METHOD|OPTIMIZER|PROMPT_LENGTH|LOPA_RANK)\s*=", code,
                         re.M), path
    assert not re.search(r"^\s*methods\.", code, re.M), path
  homes = [p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.gin")
           if re.search(r"^PROMPT_LENGTH\s*=", p.read_text(), re.M)]
  # Only method gins assign it (one per run, enforced above), each its default.
  assert homes and all(h.startswith("methods/") for h in homes), homes


# ------------------------------------------------------------------ macros in flags


def test_a_misspelt_macro_flag_gets_did_you_mean():
  with pytest.raises(gin_structure.UnknownMacroError,
                     match="unknown macro TRAIN_STEP; did you mean TRAIN_STEPS"):
    cli.parse_gin(["models/t5_1_1_base.gin", "methods/prompt_tuning.gin",
                   "runs/prompt_finetune.gin"], BASE + ["TRAIN_STEP = 5"])


def test_a_macro_nothing_knows_is_refused_and_known_ones_pass():
  files = ["models/t5_1_1_base.gin", "methods/prompt_tuning.gin",
           "runs/prompt_finetune.gin"]
  with pytest.raises(gin_structure.UnknownMacroError, match="QWERTY"):
    cli.parse_gin(files, BASE + ["QWERTY = 5"])
  gin.clear_config()
  # Defined by another gin file of configs/ (one sweep binding for train and eval),
  # read by the entry points, or referenced by another flag: all fine.
  cli.parse_gin(files, BASE + ["EVAL_BATCH_SIZE = 3", "PROMPT_FILE = 'x.npy'",
                               "MY_STEPS = 9", "TRAIN_STEPS = %MY_STEPS"])
  assert cli.macro("TRAIN_STEPS") == 9


# ------------------------------------------------------------------ documented commands

_ENTRY = re.compile(r"python -m prompt_tuning\.(train|eval|infer)\b")


def documented_commands():
  """(doc, entry, argv) of every `python -m prompt_tuning.{train,eval,infer}` command
  in a code block of README.md and docs/*.md (continuation lines joined)."""
  out = []
  for doc in [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md")):
    blocks = re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S)
    for block in blocks:
      text = block.replace('\\"', '"')
      text = re.sub(r"\\\n", " ", text)
      for line in text.splitlines():
        match = _ENTRY.search(line)
        if not match:
          continue
        command = line[match.end():].split(" #")[0].rstrip()
        if command.count('"') % 2:  # the end of an enclosing quote (gcloud --command)
          command = command[:command.rindex('"')]
        command = re.sub(r"\$\{?(\w+)\}?", r"/tmp/\1", command)  # shell variables
        argv = [a for a in shlex.split(command) if a != "..."]
        out.append((doc.name, match.group(1), argv))
  return out


def _gin_of(argv):
  files, bindings = [], []
  for arg in cli.rewrite_gin_args(argv):
    if arg.startswith("--gin_file="):
      files.append(arg.split("=", 1)[1])
    elif arg.startswith("--gin_bindings="):
      bindings.append(arg.split("=", 1)[1])
  return files, bindings


COMMANDS = documented_commands()


def test_the_docs_have_commands_of_every_entry_point():
  assert {entry for _, entry, _ in COMMANDS} == {"train", "eval", "infer"}
  assert len(COMMANDS) >= 10


@pytest.mark.parametrize("doc,entry,argv", COMMANDS,
                         ids=[f"{d}-{e}-{i}" for i, (d, e, _) in enumerate(COMMANDS)])
def test_every_documented_command_parses_and_binds_its_method(doc, entry, argv):
  files, bindings = _gin_of(argv)
  cli.parse_gin(files, bindings)
  method_files = [f for f in files if f.startswith("methods/")]
  if method_files:
    expected = "methods." + pathlib.Path(method_files[-1]).stem
    assert _method() == expected, (doc, argv)
  if entry == "train":  # training always names its method
    assert method_files, (doc, argv)
