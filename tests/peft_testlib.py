"""A tiny Hugging Face T5 on disk and losses in PyTorch and in JAX, shared by the
PEFT adapter tests (tests/test_methods_{lora,ia3}.py). Also used by
tests/test_prompt_files.py (an untied gated-GELU T5 with a distinct lm_head)."""
import functools
import json

import jax
import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.methods.base import Method

from methods_testlib import batch, loss

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def save_untied_hf_t5(directory, num_layers: int = 2):
  """An untied gated-GELU T5 1.1 (H=32, `num_layers` + `num_layers`) saved by
  transformers with random weights and a distinct lm_head; returns `directory`."""
  from safetensors.torch import load_file, save_file  # pylint: disable=g-import-not-at-top
  hf_config = transformers.T5Config(
      vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=num_layers,
      num_decoder_layers=num_layers, num_heads=4, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)
  torch.manual_seed(0)
  transformers.T5ForConditionalGeneration(hf_config).save_pretrained(directory)
  # transformers 5 ties lm_head to the input embedding on save whatever the config
  # says: write a distinct head and an untied config, then reload.
  weights = directory / "model.safetensors"
  tensors = load_file(weights)
  tensors["lm_head.weight"] = torch.randn(128, 32, generator=torch.Generator().manual_seed(1))
  save_file(tensors, weights, metadata={"format": "pt"})
  config_json = json.loads((directory / "config.json").read_text())
  config_json["tie_word_embeddings"] = False
  (directory / "config.json").write_text(json.dumps(config_json))
  return directory


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """An untied T5 1.1 (2 + 2 layers, H=32) saved by transformers, random weights."""
  return save_untied_hf_t5(tmp_path_factory.mktemp("hf_t5"), num_layers=2)


def hf_model(directory):
  model = transformers.T5ForConditionalGeneration.from_pretrained(directory)
  model.eval()
  return model


def hf_loss(model, enc, tgt):
  labels = np.where(np.asarray(tgt) > 0, np.asarray(tgt), -100).astype(np.int64)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.asarray(enc).astype(np.int64)),
                attention_mask=torch.tensor(np.asarray(enc) > 0).long(),
                labels=torch.tensor(labels))
  return float(out.loss)


def ours_loss(directory, method):
  """(config, frozen params, loss of the frozen model, (enc, dec, tgt)) for a batch
  with padding; `method` is unused (the frozen model's loss)."""
  del method
  config, params = checkpoints.load(directory)
  enc, dec, tgt = batch(size=3, inputs=9, targets=5)
  plain = Method(name="plain").build(config)
  value = float(jax.jit(functools.partial(loss, plain))(params, enc, dec, tgt))
  return config, params, value, (enc, dec, tgt)
