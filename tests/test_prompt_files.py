"""Export: numpy files and Hugging Face PEFT adapters, checked against PyTorch."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import params as params_lib
from prompt_tuning import checkpoints
from prompt_tuning import prompt_files
from prompt_tuning.training import optim
from prompt_tuning.methods.prefix import prefix_tuning
from prompt_tuning.methods.prompt import prompt_tuning

import peft_testlib
from methods_testlib import batch, loss, random_params, tiny_config

P = 5
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


# ---------------------------------------------------------------- numpy


def test_save_numpy_round_trips_through_the_file_initializer(tmp_path):
  config = tiny_config()
  method = prompt_tuning(length=P)
  enc, dec, _ = batch()
  params = random_params(method.build(config), enc, dec)
  written = prompt_files.save_numpy(tmp_path, method, params)
  assert list(written) == ["encoder.prompt.prompt"]
  path = written["encoder.prompt.prompt"]
  assert path.endswith("encoder.prompt.prompt.npy")
  stored = np.load(path)
  assert stored.dtype == np.float32 and stored.shape == (P, 32)
  again = prompt_tuning(length=P, initializer=prompt_files.from_file(path)).initialize(
      jax.random.PRNGKey(1), params, config)
  np.testing.assert_array_equal(again["encoder"]["prompt"]["prompt"],
                                params["encoder"]["prompt"]["prompt"])


def test_save_numpy_writes_folded_prefixes(tmp_path):
  config = tiny_config()
  method = prefix_tuning(length=2, hidden_dim=8)
  enc, dec, _ = batch()
  params = random_params(method.build(config), enc, dec)
  written = prompt_files.save_numpy(tmp_path, method, params)
  assert sorted(written) == ["prefix.decoder.key", "prefix.decoder.value",
                             "prefix.encoder.key", "prefix.encoder.value"]
  assert np.load(written["prefix.encoder.key"]).shape == (2, 2, 4, 8)  # [L, P, N, D]


def test_save_prompt_refuses_non_matrices(tmp_path):
  with pytest.raises(ValueError, match=r"\[P, H\]"):
    prompt_files.save_prompt(tmp_path / "p.npy", np.zeros((2, 3, 4)))


# ---------------------------------------------------------------- PEFT


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """A tiny untied gated-GELU T5 (1 + 1 layers) with a distinct lm_head."""
  return peft_testlib.save_untied_hf_t5(tmp_path_factory.mktemp("hf_t5"), num_layers=1)


def _hf_model(directory):
  model = peft_testlib.hf_model(directory)
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  return model


def _ours(directory, prompt=None):
  config, params = checkpoints.load(directory)
  enc, dec, tgt = batch(size=3, inputs=9, targets=5)
  if prompt is None:
    model = prompt_tuning(length=1).build(config).clone(prompt=None)
  else:
    model = prompt_tuning(length=prompt.shape[0]).build(config)
    params = params_lib.with_params(params, {"encoder/prompt/prompt": jnp.asarray(prompt)})
  value = jax.jit(functools.partial(loss, model))(params, enc, dec, tgt)
  return config, float(value), (enc, tgt)


def test_loaded_hf_model_gives_the_same_loss_without_prompt(hf_checkpoint):
  _, ours, (enc, tgt) = _ours(hf_checkpoint)
  assert abs(ours - peft_testlib.hf_loss(_hf_model(hf_checkpoint), enc, tgt)) < 1e-4


def test_peft_adapter_gives_the_same_loss_in_pytorch(hf_checkpoint, tmp_path):
  prompt = np.random.default_rng(0).uniform(-0.5, 0.5, (P, 32)).astype(np.float32)
  config, ours, (enc, tgt) = _ours(hf_checkpoint, prompt)
  _, plain, _ = _ours(hf_checkpoint)
  assert abs(ours - plain) > 1e-3  # the prompt matters
  adapter = prompt_files.save_peft(tmp_path / "adapter", prompt, config)
  stored = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert stored["peft_type"] == "PROMPT_TUNING" and stored["num_virtual_tokens"] == P
  peft_model = peft.PeftModel.from_pretrained(_hf_model(hf_checkpoint), adapter)
  peft_model.eval()
  np.testing.assert_array_equal(
      peft_model.get_prompt_embedding_to_save("default").numpy(), prompt)
  assert abs(ours - peft_testlib.hf_loss(peft_model, enc, tgt)) < 1e-4


def test_adapter_written_by_peft_imports_and_training_continues(hf_checkpoint, tmp_path):
  """PEFT's own save (seq2seq default: 2 submodules, [2P, H]) → our prompt, same
  loss as PEFT, then a few Adafactor steps on the imported prompt."""
  torch.manual_seed(3)
  peft_config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P)
  peft_model = peft.get_peft_model(_hf_model(hf_checkpoint), peft_config)
  peft_model.save_pretrained(tmp_path / "from_peft")
  saved = peft_model.get_prompt_embedding_to_save("default").numpy()
  assert saved.shape == (2 * P, 32)
  prompt = prompt_files.load_peft(tmp_path / "from_peft")
  np.testing.assert_array_equal(prompt, saved[:P])
  peft_model.eval()
  config, ours, (enc, tgt) = _ours(hf_checkpoint, prompt)
  assert abs(ours - peft_testlib.hf_loss(peft_model, enc, tgt)) < 1e-4

  # Continue training: the adapter directory is a valid PROMPT_FILE.
  method = prompt_tuning(length=P, initializer=prompt_files.from_file(tmp_path / "from_peft"))
  _, frozen_params = checkpoints.load(hf_checkpoint)
  params = method.initialize(jax.random.PRNGKey(0), frozen_params, config)
  np.testing.assert_array_equal(params["encoder"]["prompt"]["prompt"], prompt)
  model = method.build(config)
  enc, dec, tgt = batch(size=3, inputs=9, targets=5)
  trainable, frozen = params_lib.split(params, method.trainable)
  tx = optim.adafactor_prompt_tuning(learning_rate=0.1)
  state = tx.init(trainable)
  grad = jax.jit(jax.value_and_grad(
      lambda t: loss(model, params_lib.merge(t, frozen), enc, dec, tgt)))
  losses = []
  for _ in range(3):
    value, grads = grad(trainable)
    trainable, state = optim.apply_gradients(tx, grads, state, trainable)
    losses.append(float(value))
  assert losses[-1] < losses[0]
  assert abs(losses[0] - ours) < 1e-4


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: (d / "adapter_config.json").unlink(), "adapter config"),
    (lambda d: (d / "adapter_config.json").write_text('{"peft_type": "LORA"}'),
     "LORA"),
    (lambda d: (d / "adapter_model.safetensors").unlink(), "no adapter_model"),
    (lambda d: (d / "adapter_model.safetensors").write_bytes(b"junk"), "safetensors"),
    (lambda d: (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM",
         "num_virtual_tokens": 4, "token_dim": 32, "num_transformer_submodules": 1})),
     r"\[4, 32\]"),
])
def test_broken_adapters_raise_peft_format_error(tmp_path, corrupt, message):
  directory = tmp_path / "adapter"
  prompt_files.save_peft(directory, np.zeros((P, 32), np.float32))
  corrupt(directory)
  with pytest.raises(prompt_files.PeftFormatError, match=message):
    prompt_files.load_peft(directory)


def test_from_file_checks_the_adapter_prompt_shape(tmp_path):
  prompt_files.save_peft(tmp_path / "adapter", np.zeros((P, 32), np.float32))
  with pytest.raises(prompt_files.PromptFileError, match="PROMPT_LENGTH to 5"):
    prompt_files.from_file(tmp_path / "adapter")(None, (7, 32), None)
  with pytest.raises(prompt_files.PromptFileError, match="adapter_config.json"):
    prompt_files.from_file(tmp_path)(None, (5, 32), None)
