"""Prompt tuning on the decoder-only families: the method's hook, initializers,
trainable set and export, and PEFT interop on CAUSAL_LM (the same loss in
PyTorch, both directions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoder_testlib as lib
from prompt_tuning import checkpoints, export
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.base import flatten
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models.decoder_config import gpt2_preset, llama_preset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

P = 4
CONFIGS = {"gpt2": gpt2_preset("tiny", n_embd=24, n_head=3, vocab_size=97,
                               dropout_rate=0.0),
           "llama": llama_preset("tiny", hidden_size=24, num_attention_heads=6,
                                 num_key_value_heads=2, vocab_size=97)}
SCOPE = {"gpt2": "transformer", "llama": "model"}


def _frozen(family, seed=0):
  config = CONFIGS[family]
  return config, lib.init(config, seed)[1]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_prompt_tuning_builds_initializes_and_exports(family):
  config, params = _frozen(family)
  method = prompt_tuning(length=P, initializer=inits.sampled_vocab(population=50))
  params = method.initialize(jax.random.PRNGKey(0), params, config)
  prompt = np.asarray(params[SCOPE[family]]["prompt"]["prompt"])
  table = np.asarray(params[SCOPE[family]]["wte" if family == "gpt2" else
                                          "embed_tokens"]["embedding"])
  # Every prompt row is one of the first 50 vocabulary rows.
  assert all(np.any(np.all(table[:50] == row, axis=1)) for row in prompt)
  trained = [k for k, v in flatten(method.trainable_mask(params)).items() if v]
  assert trained == [f"{SCOPE[family]}/prompt/prompt"]
  tokens = jnp.asarray(np.arange(1, 13).reshape(2, 6))
  logits = lib.apply(method.build(config), {"params": params}, tokens)
  assert logits.shape == (2, 6 + P, config.vocab_size)
  exported = method.exported(params)
  assert list(exported) == [f"{SCOPE[family]}.prompt.prompt"]
  np.testing.assert_array_equal(exported[f"{SCOPE[family]}.prompt.prompt"], prompt)


def _batch():
  """tokens [2, 7] with a right-padded row; labels -100 at padding (HF style)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 97, (2, 7))
  tokens[1, 5:] = 0
  return tokens


def _our_loss(config, params, method, tokens):
  """Mean next-token cross entropy over the real input tokens; the last prompt
  position predicts the first token (PEFT labels the prompt positions -100)."""
  logits = lib.apply(method.build(config), {"params": params}, jnp.asarray(tokens))
  logits = np.asarray(logits)[:, P - 1:-1]  # predictions of tokens 0..T-1
  targets = tokens
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
  picked = np.take_along_axis(log_probs, targets[..., None], axis=2)[..., 0]
  real = targets > 0
  return -picked[real].mean()


def _hf_loss(model, tokens):
  labels = np.where(tokens > 0, tokens, -100)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens > 0),
                labels=torch.tensor(labels))
  return float(out.loss)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
  path = tmp_path_factory.mktemp("gpt2")
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3))
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "ln_" not in name:
        param.normal_(0.0, 0.2)
  model.eval().save_pretrained(path)
  return path


def test_peft_adapter_gives_the_same_loss_in_pytorch(hf_gpt2, tmp_path):
  config, params = checkpoints.load(hf_gpt2)
  method = prompt_tuning(length=P)
  params = method.initialize(jax.random.PRNGKey(2), params, config)
  prompt = np.asarray(params["transformer"]["prompt"]["prompt"])
  adapter = export.save_peft(tmp_path / "adapter", prompt, config)
  peft_model = peft.PeftModel.from_pretrained(
      transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2), adapter).eval()
  assert peft_model.peft_config["default"].task_type == "CAUSAL_LM"
  tokens = _batch()
  ours = _our_loss(config, params, method, tokens)
  assert abs(ours - _hf_loss(peft_model, tokens)) < 1e-4


def test_adapter_written_by_peft_gives_the_same_loss_here(hf_gpt2, tmp_path):
  peft_config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)
  torch.manual_seed(1)
  peft_model = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(
      hf_gpt2), peft_config)
  with torch.no_grad():  # a prompt far from zero, so that it matters
    peft_model.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
  peft_model.save_pretrained(tmp_path / "from_peft")
  config, params = checkpoints.load(hf_gpt2)
  method = prompt_tuning(length=P, initializer=inits.from_file(tmp_path / "from_peft"))
  params = method.initialize(jax.random.PRNGKey(0), params, config)
  tokens = _batch()
  ours = _our_loss(config, params, method, tokens)
  assert abs(ours - _hf_loss(peft_model.eval(), tokens)) < 1e-4
