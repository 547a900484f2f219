"""Prompt bank: a mixed batch equals each task run alone with its single prompt."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from methods_testlib import random_params

from prompt_tuning import prompt_files
from prompt_tuning.models import decoding
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.params import flatten, with_params
from prompt_tuning.methods.prompt import Prompt
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

VOCAB = 64
CONFIG = preset("tiny", vocab_size=VOCAB, dropout_rate=0.0)
H = CONFIG.emb_dim


@pytest.fixture(scope="module")
def frozen():
  """Frozen tiny T5 params (no prompt), a batch and three prompts (one short)."""
  model = Transformer(CONFIG)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (6, 7), 2, VOCAB)
  tokens = tokens.at[3, 4:].set(0)
  params = random_params(model, tokens, tokens[:, :2])
  rng = np.random.default_rng(0)
  prompts = {"a": rng.normal(size=(4, H)).astype(np.float32),
             "b": rng.normal(size=(2, H)).astype(np.float32),  # shorter: padded
             "c": rng.normal(size=(4, H)).astype(np.float32)}
  decoder_inputs = jax.random.randint(jax.random.PRNGKey(2), (6, 5), 0, VOCAB)
  return params, tokens, decoder_inputs, prompts


def single_prompt_logits(params, prompt, tokens, decoder_inputs):
  """The reference: prompt tuning's own `[P, H]` Prompt module, one task alone."""
  model = Transformer(CONFIG, prompt=Prompt(length=prompt.shape[0]))
  full = with_params(params, {"encoder/prompt": {"prompt": prompt}})
  return model.apply({"params": full}, tokens, decoder_inputs)


def test_mixed_batch_matches_each_task_alone(frozen):
  params, tokens, decoder_inputs, prompts = frozen
  bank, bank_params = bank_lib.from_prompts(prompts)
  assert bank.names == ("a", "b", "c") and bank.lengths == (4, 2, 4)
  model = Transformer(CONFIG, prompt=bank)
  full = bank_lib.with_bank(params, bank_params)
  names = ["a", "b", "c", "b", "a", "c"]
  index = bank.indices(names)
  mixed = model.apply({"params": full}, tokens, decoder_inputs, prompt_index=index)
  mixed_decode = decoding.greedy_decode(model, full, tokens, max_decode_length=5,
                                        prompt_index=index)
  for name in "abc":
    rows = np.flatnonzero(np.asarray(names) == name)
    alone = single_prompt_logits(params, prompts[name], tokens[rows],
                                 decoder_inputs[rows])
    np.testing.assert_allclose(mixed[rows], alone, atol=1e-5, rtol=1e-5,
                               err_msg=name)
    reference = Transformer(CONFIG, prompt=Prompt(length=prompts[name].shape[0]))
    alone_decode = decoding.greedy_decode(
        reference, with_params(params, {"encoder/prompt/prompt":
                                                 prompts[name]}),
        tokens[rows], max_decode_length=5)
    np.testing.assert_array_equal(mixed_decode[rows], alone_decode, err_msg=name)
  # The prompts matter: another assignment changes the outputs.
  other = model.apply({"params": full}, tokens, decoder_inputs,
                      prompt_index=bank.indices(["c", "a", "b", "a", "c", "b"]))
  assert np.abs(np.asarray(other) - np.asarray(mixed)).max() > 1e-3


@pytest.mark.parametrize("combine,names", [
    ("suffix", ("a", "b", "c")),     # mixed lengths: b is right-padded
    ("after_bos", ("a", "c")),       # one length only
])
def test_bank_places_prompts_like_the_single_prompt_module(frozen, combine, names):
  params, tokens, decoder_inputs, prompts = frozen
  bank, bank_params = bank_lib.from_prompts({n: prompts[n] for n in names},
                                            combine=combine)
  model = Transformer(CONFIG, prompt=bank)
  full = bank_lib.with_bank(params, bank_params)
  assign = [names[i % len(names)] for i in range(6)]
  mixed = model.apply({"params": full}, tokens, decoder_inputs,
                      prompt_index=bank.indices(assign))
  for name in names:
    rows = np.flatnonzero(np.asarray(assign) == name)
    single = Transformer(CONFIG, prompt=Prompt(length=prompts[name].shape[0],
                                               combine=combine))
    alone = single.apply({"params": with_params(
        params, {"encoder/prompt/prompt": prompts[name]})}, tokens[rows],
                         decoder_inputs[rows])
    np.testing.assert_allclose(mixed[rows], alone, atol=1e-5, rtol=1e-5,
                               err_msg=name)
    # ... and not like the prompt placed elsewhere.
    prefix = single_prompt_logits(params, prompts[name], tokens[rows],
                                  decoder_inputs[rows])
    assert np.abs(np.asarray(prefix) - np.asarray(alone)).max() > 1e-3
  if combine == "suffix":
    np.testing.assert_array_equal(bank.length_mask()[1], [1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(bank_params["prompts"])[1, 2:], 0.0)


def test_after_bos_bank_refuses_prompts_of_different_lengths(frozen):
  *_, prompts = frozen
  with pytest.raises(ValueError, match="one length"):
    bank_lib.from_prompts(prompts, combine="after_bos")
  with pytest.raises(ValueError, match="Unknown prompt combination 'middle'"):
    bank_lib.PromptBank(lengths=(2,), combine="middle")


def test_same_length_prompt_is_exact(frozen):
  params, tokens, decoder_inputs, prompts = frozen
  bank, bank_params = bank_lib.from_prompts({"a": prompts["a"], "c": prompts["c"]})
  model = Transformer(CONFIG, prompt=bank)
  got = model.apply({"params": bank_lib.with_bank(params, bank_params)}, tokens,
                    decoder_inputs, prompt_index=np.ones(6, np.int32))
  np.testing.assert_array_equal(
      got, single_prompt_logits(params, prompts["c"], tokens, decoder_inputs))


def test_short_prompt_is_left_padded_and_masked(frozen):
  params, tokens, _, prompts = frozen
  bank, bank_params = bank_lib.from_prompts(prompts)
  stacked = np.asarray(bank_params["prompts"])
  assert stacked.shape == (3, 4, H)
  np.testing.assert_array_equal(stacked[1, :2], 0.0)
  np.testing.assert_array_equal(stacked[1, 2:], prompts["b"])
  np.testing.assert_array_equal(bank.length_mask(),
                                [[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
  model = Transformer(CONFIG, prompt=bank)
  _, mask = decoding.encode(model, bank_lib.with_bank(params, bank_params), tokens,
                            bank.indices(["b", "a", "b", "c", "b", "a"]))
  assert mask.shape == (6, 4 + 7)
  np.testing.assert_array_equal(mask[:, :4], bank.length_mask()[[1, 0, 1, 2, 1, 0]])
  np.testing.assert_array_equal(mask[:, 4:], np.asarray(tokens) > 0)


def test_param_path_axes_and_index_errors(frozen):
  params, tokens, decoder_inputs, _ = frozen
  bank = bank_lib.PromptBank(lengths=(3, 5), names=("x", "y"))
  model = Transformer(CONFIG, prompt=bank)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens,
                                                decoder_inputs))
  boxed = variables["params"]["encoder"]["prompt"]["prompts"]
  assert boxed.names == ("prompts", "prompt", "embed")
  assert boxed.value.shape == (2, 5, H)
  assert bank_method_trains_only_the_bank(bank, variables["params"])
  full = bank_lib.with_bank(params, {"prompts": jnp.zeros((2, 5, H))})
  with pytest.raises(ValueError, match="prompt_index"):
    model.apply({"params": full}, tokens, decoder_inputs)
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    model.apply({"params": full}, tokens, decoder_inputs,
                prompt_index=np.asarray([0, 1, 2, 0, 0, 0]))
  with pytest.raises(ValueError, match=r"\[0, 2\) \(the bank's prompts\)"):
    decoding.greedy_decode(model, full, tokens, max_decode_length=2,
                           prompt_index=np.asarray([0, 1, 2, 0, 0, 0]))
  with pytest.raises(ValueError, match=r"prompt_index must be \[B\]"):
    decoding.greedy_decode(model, full, tokens, max_decode_length=2,
                           prompt_index=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match=r"encoder/prompt/prompts has shape"):
    model.apply({"params": bank_lib.with_bank(params, {"prompts": jnp.zeros((3, 5, H))})},
                tokens, decoder_inputs, prompt_index=np.zeros(6, np.int32))
  with pytest.raises(KeyError, match="'z'"):
    bank.indices(["x", "z"])


def bank_method_trains_only_the_bank(bank, params):
  mask = bank_lib.bank_method(bank).trainable_mask(params)
  flat = flatten(mask)
  return [k for k, v in flat.items() if v] == ["encoder/prompt/prompts"]


def test_one_compile_serves_any_mix(frozen):
  params, tokens, _, prompts = frozen
  bank, bank_params = bank_lib.from_prompts(prompts)
  model = Transformer(CONFIG, prompt=bank)
  full = bank_lib.with_bank(params, bank_params)
  rng = np.random.default_rng(1)
  decoding.greedy_decode(model, full, tokens, max_decode_length=3,
                         prompt_index=np.zeros(6, np.int32))
  before = decoding._greedy_jit._cache_size()  # pylint: disable=protected-access
  for _ in range(3):
    decoding.greedy_decode(model, full, tokens, max_decode_length=3,
                           prompt_index=rng.integers(0, 3, 6).astype(np.int32))
  assert decoding._greedy_jit._cache_size() == before  # pylint: disable=protected-access


def test_loading_files_and_model_dirs(frozen, tmp_path):
  _, _, _, prompts = frozen
  np.save(tmp_path / "sst2.npy", prompts["a"])
  model_dir = tmp_path / "rte_run"
  for step, name in ((20, "b"), (100, "c"), (3, "a")):  # 100 is the newest
    folder = model_dir / "numpy_checkpoints" / f"checkpoint_{step}"
    folder.mkdir(parents=True)
    np.save(folder / prompt_files.PROMPT_FILE, prompts[name])
  loaded = [prompt_files.load_prompt(s)
            for s in (tmp_path / "sst2.npy", model_dir, prompts["b"])]
  bank, bank_params = bank_lib.from_prompts(loaded)
  assert bank.names == ("prompt_0", "prompt_1", "prompt_2")
  stacked = np.asarray(bank_params["prompts"])
  np.testing.assert_array_equal(stacked[0], prompts["a"])
  np.testing.assert_array_equal(stacked[1], prompts["c"])
  np.testing.assert_array_equal(stacked[2, 2:], prompts["b"])
  # A single checkpoint folder works too.
  one = model_dir / "numpy_checkpoints" / "checkpoint_20"
  np.testing.assert_array_equal(prompt_files.load_prompt(one), prompts["b"])
  with pytest.raises(ValueError, match="does not exist"):
    prompt_files.load_prompt(tmp_path / "missing.npy")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError,
                     match="numpy_checkpoints/checkpoint_<step>/encoder.prompt.prompt"):
    prompt_files.load_prompt(tmp_path / "empty")
  with pytest.raises(TypeError, match="load_prompt"):
    bank_lib.from_prompts({"x": tmp_path / "sst2.npy"})
  with pytest.raises(ValueError, match="same width H"):
    bank_lib.from_prompts({"x": prompts["a"], "y": np.zeros((2, H + 1))})
