"""Prompts that know their model: fingerprints on every export, refused mismatches."""
import json
import logging
import pathlib

import jax
import numpy as np
import pytest

from prompt_tuning import building
from prompt_tuning import eval as eval_lib
from prompt_tuning import fingerprint
from prompt_tuning.run_dir import layout
from prompt_tuning import infer as infer_lib
from prompt_tuning import prompt_files
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models.config import preset
from prompt_tuning.run_dir import train_state as ckpt

CONFIG = preset("tiny", vocab_size=64, dropout_rate=0.0)
RELEASED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / \
    "released_prompts" / "t5_1_1_lm100k_base" / "rte.npy"


class Vocab:
  vocab_size = 64

  def __init__(self, model: bytes):
    self.sp_model = model


@pytest.fixture(scope="module")
def built_a():
  """The tiny frozen model that eval / infer build with seed 0 (no checkpoint)."""
  _, params, _ = building.build_params(prompt_tuning(length=3), CONFIG, None,
                                       jax.random.PRNGKey(0), run_initializer=False)
  return params


@pytest.fixture(scope="module")
def model_a(built_a):
  return fingerprint.of_params(built_a, None, "prompt/prefix", name="model-A")


def test_each_part_changes_the_fingerprint():
  table = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
  base = fingerprint.of_model(table, Vocab(b"sp-1"), "prompt/prefix", "m")
  assert base == fingerprint.of_model(table.copy(), Vocab(b"sp-1"), "prompt/prefix", "m")
  nudged = table.copy()
  nudged[3, 2] = np.nextafter(nudged[3, 2], np.float32(9))  # one ulp in one entry
  variants = {
      "embedding": fingerprint.of_model(nudged, Vocab(b"sp-1"), "prompt/prefix"),
      "vocabulary": fingerprint.of_model(table, Vocab(b"sp-2"), "prompt/prefix"),
      "placement": fingerprint.of_model(table, Vocab(b"sp-1"), "prompt/suffix"),
  }
  for part, other in variants.items():
    assert other["fingerprint"] != base["fingerprint"], part
    assert fingerprint.differences(base, other) == [part]
  # The same values in bfloat16-representable float32 vs bfloat16 hash the same.
  assert fingerprint.of_model(table.astype(jax.numpy.bfloat16))["embedding"] == \
      fingerprint.of_model(table.astype(jax.numpy.bfloat16).astype(np.float32))[
          "embedding"]


def test_npy_sidecar_refuses_another_model_in_one_line(tmp_path, built_a, model_a):
  prompt = np.ones((3, CONFIG.emb_dim), np.float32)
  path = prompt_files.save_prompt(tmp_path / "p.npy", prompt, model=model_a)
  assert fingerprint.sidecar_path(path).name == "p.model.json"
  assert prompt_files.check_model(path, model_a) is True
  other = np.array(built_a["token_embedder"]["embedding"])
  other[0, 0] += 1.0
  model_b = fingerprint.of_model(other, None, "prompt/prefix", "model-B")
  with pytest.raises(fingerprint.PromptModelMismatch) as error:
    prompt_files.check_model(path, model_b)
  message = str(error.value)
  assert "\n" not in message and "model-A" in message and "model-B" in message
  assert "embedding" in message and fingerprint.OVERRIDE in message
  assert prompt_files.check_model(path, model_b, allow=True) is False
  suffix = fingerprint.of_params(built_a, None, "prompt/suffix", "model-A")
  with pytest.raises(fingerprint.PromptModelMismatch, match="differ in placement"):
    prompt_files.check_model(path, suffix)


def test_released_prompt_without_fingerprint_loads_with_a_warning(caplog, model_a):
  assert RELEASED.is_file(), RELEASED
  with caplog.at_level(logging.WARNING):
    assert prompt_files.check_model(RELEASED, model_a) is False
  assert "no model fingerprint" in caplog.text and "model-A" in caplog.text


def test_peft_adapter_carries_it_in_the_safetensors_header(tmp_path, model_a):
  prompt = np.ones((2, CONFIG.emb_dim), np.float32)
  adapter = prompt_files.save_peft(tmp_path / "adapter", prompt, CONFIG, model=model_a)
  assert fingerprint.read_any(adapter) == model_a
  np.testing.assert_array_equal(prompt_files.load_peft(adapter), prompt)
  config = json.loads((pathlib.Path(adapter) / prompt_files.ADAPTER_CONFIG).read_text())
  assert "model_fingerprint" not in config  # PEFT would warn about an unknown key
  plain = prompt_files.save_peft(tmp_path / "plain", prompt, CONFIG)
  assert fingerprint.read_any(plain) is None


def test_run_exports_copy_the_run_fingerprint_next_to_every_array(tmp_path, model_a):
  arrays = {"encoder.prompt.prompt": np.ones((3, 4), np.float32),
            "other.thing": np.zeros((2,), np.float32)}
  before = ckpt.export_step(str(tmp_path), 1, arrays)  # no record yet: no sidecar
  assert not list(before.glob("*.model.json"))
  ckpt.write_model_fingerprint(str(tmp_path), model_a)
  step = ckpt.export_step(str(tmp_path), 2, arrays)
  best = ckpt.export_best(str(tmp_path), arrays, {"step": 2})
  for directory in (step, best):
    for name in arrays:
      assert fingerprint.read_sidecar(directory / f"{name}.npy") == model_a
    assert sorted(layout.read_arrays(directory)) == sorted(arrays)
    assert fingerprint.read_any(directory) == model_a


def _model_dir(root, model):
  ckpt.check_or_write_run_config(str(root), {
      "method": "prompt", "initial_checkpoint_path": None,
      "model_config": CONFIG.to_dict()})
  ckpt.write_model_fingerprint(str(root), model)
  prompt = np.random.default_rng(0).normal(size=(3, CONFIG.emb_dim)).astype(np.float32)
  ckpt.export_step(str(root), 1, {"encoder.prompt.prompt": prompt})
  ckpt.export_best(str(root), {"encoder.prompt.prompt": prompt}, {"step": 1})
  return prompt


def test_eval_refuses_an_export_of_another_model(tmp_path, model_a, caplog):
  method = prompt_tuning(length=3)
  prompt = _model_dir(tmp_path, model_a)
  _, params, _, _ = eval_lib.load_trained(method, None, None, model_dir=str(tmp_path),
                                          seed=0)
  np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], prompt)
  with pytest.raises(fingerprint.PromptModelMismatch, match="model-A"):
    eval_lib.load_trained(method, None, None, model_dir=str(tmp_path), seed=1)
  with caplog.at_level(logging.WARNING):
    eval_lib.load_trained(method, None, None, model_dir=str(tmp_path), seed=1,
                          allow_model_mismatch=True)
  assert "ALLOW_PROMPT_MODEL_MISMATCH" in caplog.text


def test_infer_refuses_a_bank_entry_of_another_model(tmp_path, model_a, caplog):
  _model_dir(tmp_path / "run", model_a)
  plain = tmp_path / "plain.npy"
  np.save(plain, np.ones((2, CONFIG.emb_dim), np.float32))
  with caplog.at_level(logging.WARNING):
    _, _, bank, _ = infer_lib.load_bank_model(
        {"a": str(tmp_path / "run"), "plain": str(plain)}, None, None, seed=0)
  assert bank.names == ("a", "plain")
  assert "plain.npy has no model fingerprint" in caplog.text
  with pytest.raises(infer_lib.InferError, match=r"Prompt 'a': .*model-A.*randomly"):
    infer_lib.load_bank_model({"a": str(tmp_path / "run")}, None, None, seed=1)
  infer_lib.load_bank_model({"a": str(tmp_path / "run")}, None, None, seed=1,
                            allow_model_mismatch=True)
