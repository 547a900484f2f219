"""Prompt tuning on the decoder-only families: the method's hook, initializers,
trainable set and export, and PEFT interop on CAUSAL_LM (the same loss in
PyTorch, both directions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoder_testlib as lib
from prompt_tuning import checkpoints, prompt_files
from prompt_tuning.methods import initializers as inits
from prompt_tuning.params import flatten
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models import families
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
  adapter = prompt_files.save_peft(tmp_path / "adapter", prompt, config)
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
  method = prompt_tuning(length=P, initializer=prompt_files.from_file(tmp_path / "from_peft"))
  params = method.initialize(jax.random.PRNGKey(0), params, config)
  tokens = _batch()
  ours = _our_loss(config, params, method, tokens)
  assert abs(ours - _hf_loss(peft_model.eval(), tokens)) < 1e-4


def test_prefix_tuning_on_gqa_llama_trains_folds_and_decodes():
  from prompt_tuning.methods.prefix import prefix_tuning  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.decoder_decoding import greedy_decode  # pylint: disable=g-import-not-at-top
  config, params = _frozen("llama")
  method = prefix_tuning(length=3, hidden_dim=8)
  params = method.initialize(jax.random.PRNGKey(0), params, config)
  layers, heads, head_dim = config.num_layers, config.num_kv_heads, config.head_dim
  assert sorted(params["prefix"]) == ["decoder"]  # one stack
  assert params["prefix"]["decoder"]["out_kernel"].shape == (8, layers, 2, heads,
                                                              head_dim)
  trained = [k for k, v in flatten(method.trainable_mask(params)).items() if v]
  assert trained and all(k.startswith("prefix/decoder/") for k in trained)
  tokens = jnp.asarray(_batch())
  training = lib.apply(method.build(config), {"params": params}, tokens)
  plain = lib.apply(families.build(config), {"params": params}, tokens)
  assert training.shape == plain.shape and not np.allclose(training, plain)
  inference, folded = method.inference_method(), method.inference_params(params)
  np.testing.assert_allclose(lib.apply(inference.build(config), {"params": folded},
                                       tokens), training, atol=1e-5)
  exported = method.exported(params)
  assert sorted(exported) == ["prefix.decoder.key", "prefix.decoder.value"]
  assert exported["prefix.decoder.key"].shape == (layers, 3, heads, head_dim)
  out = greedy_decode(inference.build(config), folded, tokens, max_decode_length=4,
                      eos_id=-1)
  assert out.shape == (2, 4)


def test_lopa_on_llama_is_instance_dependent():
  from prompt_tuning.methods.lopa import lopa  # pylint: disable=g-import-not-at-top
  config, params = _frozen("llama")
  method = lopa(length=3, rank=2, hidden_dim=8, dropout_rate=0.0)
  params = method.initialize(jax.random.PRNGKey(0), params, config)
  trained = [k for k, v in flatten(method.trainable_mask(params)).items() if v]
  assert trained and all(k.startswith("model/prompt/") for k in trained)
  model = method.build(config)
  assert model.prompt.needs_encoder_features  # pooled frozen hidden states
  tokens = jnp.asarray(_batch())
  both = np.asarray(lib.apply(model, {"params": params}, tokens))
  alone = np.asarray(lib.apply(model, {"params": params}, tokens[:1]))
  np.testing.assert_allclose(both[:1], alone, atol=1e-5)
  # The same Z_S as a plain prompt gives other logits: the input-dependent part
  # (from the pooled features) changes the prompt.
  plain_params = {**params, "model": {**params["model"], "prompt": {
      "prompt": params["model"]["prompt"]["prompt"]}}}
  plain = np.asarray(lib.apply(prompt_tuning(length=3).build(config),
                               {"params": plain_params}, tokens))
  assert not np.allclose(plain, both, atol=1e-3)
