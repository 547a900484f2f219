"""Every gin file in configs/methods and configs/prompts parses and builds."""
import gin
import jax
import numpy as np
import optax
import pytest

from prompt_tuning import params as params_lib
from prompt_tuning import configurables
from prompt_tuning.methods.base import Method

from conftest import REPO_ROOT, RELEASED_PROMPTS, T5_VOCAB
from methods_testlib import tiny_config

METHODS = REPO_ROOT / "configs" / "methods"
PROMPTS = REPO_ROOT / "configs" / "prompts"


@gin.configurable("methods_gin_probe")
def probe(method=gin.REQUIRED, optimizer=gin.REQUIRED):
  return method, optimizer


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def build(files, bindings=()):
  gin.parse_config_files_and_bindings(
      [str(f) for f in files],
      list(bindings) + ["methods_gin_probe.method = %METHOD",
                        "methods_gin_probe.optimizer = %OPTIMIZER"],
      finalize_config=False)
  return probe()


def test_the_expected_gin_files_exist():
  assert sorted(p.stem for p in METHODS.glob("*.gin")) == [
      "bitfit", "ia3", "lopa", "lora", "model_tuning", "multitask_prompt_tuning",
      "p_tuning_v2", "per_layer_prompt", "prefix_tuning", "prompt_design",
      "prompt_tuning"]
  assert sorted(p.stem for p in PROMPTS.glob("*.gin")) == [
      "class_labels", "from_file", "from_text", "random_uniform", "sampled_vocab"]
  assert "methods.prompt_tuning" in configurables.CONFIGURABLES


@pytest.mark.parametrize("name, method_name, trainable", [
    ("prompt_tuning", "prompt", (r".*/prompt/.*",)),
    ("prefix_tuning", "prefix", (r"prefix/.*",)),
    ("lopa", "lopa", (r".*/prompt/.*",)),  # any family's prompt scope
    ("model_tuning", "model", (r".*",)),
    ("prompt_design", "design", ()),
    ("lora", "lora", (r".*/lora_[ab]",)),
    ("ia3", "ia3", (r".*/ia3_scale",)),
    ("p_tuning_v2", "p_tuning_v2", (r"prefix/.*",)),
    ("per_layer_prompt", "per_layer_prompt", (r".*/prompt/.*",)),
    ("bitfit", "bitfit", (r".*layer_norm/scale",
                          r"(encoder|decoder)/(encoder|decoder)_norm/scale")),
])
def test_method_gin_builds_method_and_optimizer(name, method_name, trainable):
  method, optimizer = build([METHODS / f"{name}.gin"])
  assert isinstance(method, Method) and method.name == method_name
  assert method.trainable == trainable
  assert isinstance(optimizer, optax.GradientTransformation)
  state = optimizer.init({"w": np.zeros((3, 4), np.float32)})
  updates, _ = optimizer.update({"w": np.ones((3, 4), np.float32)}, state,
                                {"w": np.zeros((3, 4), np.float32)})
  moved = float(np.abs(updates["w"]).sum())
  assert (moved == 0.0) == (name == "prompt_design")


def test_gin_overrides_reach_the_method():
  method, _ = build([METHODS / "prompt_tuning.gin"],
                    ["PROMPT_LENGTH = 7", "methods.prompt_tuning.combine = 'suffix'"])
  assert method.prompt.length == 7 and method.prompt.combine == "suffix"
  method, _ = build([METHODS / "lopa.gin"], ["LOPA_RANK = 2",
                                             "methods.lopa.features = 'embeddings'"])
  assert method.prompt.rank == 2 and not method.prompt.needs_encoder_features


def _initialized_prompt(method, vocab_rows=128, width=32):
  """Runs `method.initialize` on a random frozen table; returns (prompt, table)."""
  config = tiny_config().replace(emb_dim=width)
  table = np.random.default_rng(0).standard_normal((vocab_rows, width)).astype(np.float32)
  out = method.initialize(jax.random.PRNGKey(0), {"token_embedder": {"embedding": table}},
                          config)
  return np.asarray(params_lib.get_param(out, "encoder/prompt/prompt")), table


def _is_row(table, row):
  return bool(np.any(np.all(table == row, axis=1)))


def test_random_uniform_gin():
  method, _ = build([METHODS / "prompt_tuning.gin", PROMPTS / "random_uniform.gin"],
                    ["PROMPT_LENGTH = 4"])
  prompt, table = _initialized_prompt(method)
  assert prompt.shape == (4, 32) and np.abs(prompt).max() <= 0.5
  assert not any(_is_row(table, row) for row in prompt)


def test_sampled_vocab_gin():
  method, _ = build([METHODS / "prompt_tuning.gin", PROMPTS / "sampled_vocab.gin"],
                    ["PROMPT_LENGTH = 4"])
  prompt, table = _initialized_prompt(method)
  assert all(_is_row(table, row) for row in prompt)


def test_tiny_model_samples_only_its_real_pieces():
  # tiny_bundled.gin lowers the population to the 384 SentencePiece pieces, and
  # sampled_vocab.gin (read after it) must not put 5,000 back: ids 384-511 are
  # sentinels and padding rows of the tiny embedding table.
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  cli.import_gin_modules()  # T5Config and the tasks' vocabulary, as the entry points
  method, _ = build([REPO_ROOT / "configs" / "models" / "tiny_bundled.gin",
                     METHODS / "prompt_tuning.gin", PROMPTS / "sampled_vocab.gin"],
                    ["PROMPT_LENGTH = 100"])
  assert gin.query_parameter("prompt_init.sampled_vocab.population") == 384
  prompt, table = _initialized_prompt(method, vocab_rows=512)
  rows = [int(np.flatnonzero(np.all(table == row, axis=1))[0]) for row in prompt]
  assert len(set(rows)) == 100 and max(rows) < 384


def test_class_labels_gin():
  method, _ = build([METHODS / "prompt_tuning.gin", PROMPTS / "class_labels.gin"],
                    ["MIXTURE_OR_TASK_NAME = 'unused_when_labels_are_given'",
                     "CLASS_LABELS = ['positive', 'negative']",
                     f"prompt_init.class_labels.vocabulary = '{T5_VOCAB}'",
                     "PROMPT_LENGTH = 3"])
  prompt, table = _initialized_prompt(method, vocab_rows=32128)
  np.testing.assert_array_equal(prompt[0], table[1465])  # '▁positive'
  np.testing.assert_array_equal(prompt[1], table[2841])  # '▁negative'
  assert _is_row(table[:5000], prompt[2])  # sampled vocabulary fallback


def test_class_labels_gin_refuses_a_vocabulary_of_another_model():
  method, _ = build([METHODS / "prompt_tuning.gin", PROMPTS / "class_labels.gin"],
                    ["MIXTURE_OR_TASK_NAME = 'x'", "CLASS_LABELS = ['positive']",
                     f"prompt_init.class_labels.vocabulary = '{T5_VOCAB}'"])
  with pytest.raises(ValueError, match="does not belong to this model"):
    _initialized_prompt(method, vocab_rows=128)


def test_from_text_gin():
  method, _ = build([METHODS / "prompt_tuning.gin", PROMPTS / "from_text.gin"],
                    ["PROMPT_TEXT = 'classify'", "PROMPT_LENGTH = 4",
                     "MIXTURE_OR_TASK_NAME = 'unused_when_a_vocabulary_is_given'",
                     f"prompt_init.from_text.vocabulary = '{T5_VOCAB}'"])
  prompt, table = _initialized_prompt(method, vocab_rows=32128)
  np.testing.assert_array_equal(prompt[:2], table[[853, 4921]])  # '▁class', 'ify'
  assert all(_is_row(table[:5000], row) for row in prompt[2:])


def test_from_file_gin_with_a_released_prompt():
  method, _ = build([METHODS / "prompt_tuning.gin", PROMPTS / "from_file.gin"],
                    [f"PROMPT_FILE = '{RELEASED_PROMPTS / 'rte.npy'}'"])
  prompt, _ = _initialized_prompt(method, width=768)
  np.testing.assert_array_equal(prompt, np.load(RELEASED_PROMPTS / "rte.npy"))


@pytest.mark.parametrize("prompt, macro", [("from_file", "PROMPT_FILE"),
                                           ("from_text", "PROMPT_TEXT")])
def test_prompt_gin_without_its_macro_names_the_macro(prompt, macro):
  with pytest.raises(ValueError, match=macro):
    build([METHODS / "prompt_tuning.gin", PROMPTS / f"{prompt}.gin"],
          ["MIXTURE_OR_TASK_NAME = 'x'"])


def test_prompt_gin_also_initializes_lopa():
  method, _ = build([METHODS / "lopa.gin", PROMPTS / "sampled_vocab.gin"])
  assert method.name == "lopa"
  gin_init = gin.query_parameter("methods.lopa.initializer")
  assert gin_init.configurable.name == "sampled_vocab"


def test_multitask_gin_takes_one_prompt_per_mixture_member():
  import tasks  # pylint: disable=g-import-not-at-top,unused-import  # registers the tiny tasks
  method, optimizer = build(
      [METHODS / "multitask_prompt_tuning.gin"],
      ["MIXTURE_OR_TASK_NAME = 'taskless_tiny_sentiment_topic'", "PROMPT_LENGTH = 4",
       "SHARED_PROMPT = 'concat'", "methods.multitask_prompt_tuning.shared_length = 2"])
  assert method.name == "multitask_prompt"
  assert method.prompt.names == ("taskless_tiny_sentiment", "taskless_tiny_topic")
  assert (method.prompt.length, method.prompt.total_length) == (4, 6)
  assert method.trainable == (r"encoder/prompt/.*",)
  assert isinstance(optimizer, optax.GradientTransformation)
  with pytest.raises(ValueError, match="mixture whose members"):
    build([METHODS / "multitask_prompt_tuning.gin"], ["MIXTURE_OR_TASK_NAME = None"])
