"""Numerical parity of the decoder-only families with transformers.

Random-weight GPT-2, Llama (GQA, three RoPE scalings), Mistral (sliding window),
Qwen2 (q/k/v biases, tied embeddings) and Phi-3 (fused q/k/v and gate/up, partial
rotary) models are written by `save_pretrained` at small odd sizes, read back with
`prompt_tuning.checkpoints.load`, and run on the same tokens: one full row, one
right-padded and one left-padded row with attention masks. Logits at every real
position must agree to 1e-4 in float32, teacher-forced and through our key/value
cache (prefill, then one token at a time).
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prompt_tuning import checkpoints
from prompt_tuning.models import families
from prompt_tuning.models.decoder_config import GPT2Config, LlamaConfig

TOLERANCE = 1e-4
VOCAB, LENGTH = 301, 23
_LLAMA = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72,
              num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
              max_position_embeddings=64, rms_norm_eps=1e-6, pad_token_id=0)

VARIANTS = {
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, dict(
        vocab_size=VOCAB, n_positions=48, n_embd=36, n_layer=3, n_head=3,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "gpt2-inverse-layer-scale": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
                                 dict(vocab_size=VOCAB, n_positions=32, n_embd=20,
                                      n_layer=2, n_head=5, n_inner=52,
                                      scale_attn_by_inverse_layer_idx=True)),
    "llama-gqa": (transformers.LlamaConfig, transformers.LlamaForCausalLM, _LLAMA),
    "llama3-rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        _LLAMA, rope_parameters=dict(rope_type="llama3", rope_theta=10000.0,
                                     factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0,
                                     original_max_position_embeddings=16))),
    "llama-dynamic-rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                           dict(_LLAMA, max_position_embeddings=16,
                                rope_parameters=dict(rope_type="dynamic",
                                                     rope_theta=10000.0,
                                                     factor=2.0))),
    "mistral-window": (transformers.MistralConfig, transformers.MistralForCausalLM,
                       dict(_LLAMA, num_attention_heads=4, sliding_window=5,
                            head_dim=10)),
    "qwen2-bias-tied-linear-rope": (
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(
            _LLAMA, num_attention_heads=3, num_key_value_heads=1, hidden_size=42,
            tie_word_embeddings=True, rope_parameters=dict(
                rope_type="linear", rope_theta=500.0, factor=3.0))),
    "phi3-fused": (transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(
        _LLAMA, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     partial_rotary_factor=0.5),
        pad_token_id=0, sliding_window=None)),
}


def _hf_model(name, seed=0):
  """A random HF model whose norms and biases are far from their init values."""
  config_class, model_class, sizes = VARIANTS[name]
  torch.manual_seed(seed)
  config = config_class(**sizes)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = model_class(config)
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      if "norm" in param_name or "ln_" in param_name:
        param.copy_((1.0 + 0.3 * torch.randn_like(param)) if param_name.endswith(
            "weight") else 0.2 * torch.randn_like(param))
      elif param_name.endswith("bias"):
        param.normal_(0.0, 0.2)
      else:  # HF's std 0.02 would make every logit tiny
        param.normal_(0.0, 0.2)
  return model.eval()


def _inputs(seed=0):
  """tokens [3, T], mask [3, T]: full, right-padded, left-padded rows."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, (3, LENGTH))
  mask = np.ones((3, LENGTH), bool)
  mask[1, 15:] = False
  mask[2, :6] = False
  tokens[~mask] = 0
  return tokens, mask


def _hf_logits(model, tokens, mask):
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()


@functools.lru_cache(maxsize=None)
def _jitted(config):
  model = families.build(config)
  forward = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))

  @functools.partial(jax.jit, static_argnames="length")
  def prefill(p, t, m, length):
    logits, variables = model.apply({"params": p}, t, m, cache_length=length,
                                    method=model.prefill, mutable=["cache"])
    return logits, variables["cache"]

  @jax.jit
  def step(p, cache, t):
    logits, variables = model.apply({"params": p, "cache": cache}, t,
                                    method=model.step, mutable=["cache"])
    return logits, variables["cache"]
  return forward, prefill, step


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def loaded(request, tmp_path_factory):
  """(variant, HF reference, our config, our params)."""
  path = tmp_path_factory.mktemp(request.param)
  _hf_model(request.param).save_pretrained(path)
  reference = _hf_model(request.param)
  config, params = checkpoints.load(path)
  return request.param, reference, config, params


def test_config_from_config_json(loaded):
  name, reference, config, _ = loaded
  expected = GPT2Config if name.startswith("gpt2") else LlamaConfig
  assert type(config) is expected
  assert config.num_layers == (reference.config.num_hidden_layers
                               if expected is LlamaConfig else reference.config.n_layer)
  if name == "llama-gqa":
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (6, 2, 8)
  if name.startswith("qwen2"):
    assert config.attention_bias and config.tie_word_embeddings
    assert config.rope == {"rope_type": "linear", "factor": 3.0}
  if name == "mistral-window":
    assert config.sliding_window == 5 and config.head_dim == 10
  if name == "phi3-fused":
    assert config.rotary_dim == 4
  # The start token of training and serving rows: config.json's BOS.
  bos = reference.config.bos_token_id
  assert config.bos_token_id == (bos if isinstance(bos, int) else 0)


def test_teacher_forced_logits_match(loaded):
  name, reference, config, params = loaded
  tokens, mask = _inputs()
  expected = _hf_logits(reference, tokens, mask)
  ours = np.asarray(_jitted(config)[0](params, jnp.asarray(tokens), jnp.asarray(mask)))
  assert np.abs(expected[mask]).max() > 0.5, name  # a meaningful comparison
  error = np.abs(ours - expected)[mask].max()
  assert error <= TOLERANCE, (name, error)


# "gpt2-inverse-layer-scale" runs the same cache code as "gpt2": spare a compilation.
@pytest.mark.parametrize("loaded", [v for v in sorted(VARIANTS)
                                    if v != "gpt2-inverse-layer-scale"],
                         indirect=True)
def test_cached_decoding_matches(loaded):
  """Prefill 9 tokens (the left-padded row starts with 6 pads), then feed the rest
  one at a time; each step's logits match transformers' teacher-forced ones."""
  name, reference, config, params = loaded
  tokens, mask = _inputs(seed=1)
  tokens, mask = tokens[[0, 2]], mask[[0, 2]]  # no right padding while stepping
  expected = _hf_logits(reference, tokens, mask)
  _, prefill, step = _jitted(config)
  start = 9
  logits, cache = prefill(params, jnp.asarray(tokens[:, :start]),
                          jnp.asarray(mask[:, :start]), length=LENGTH)
  errors = [np.abs(np.asarray(logits) - expected[:, :start])[mask[:, :start]].max()]
  for position in range(start, LENGTH):
    logits, cache = step(params, cache, jnp.asarray(tokens[:, position:position + 1]))
    errors.append(np.abs(np.asarray(logits[:, 0]) - expected[:, position]).max())
  backbone = "transformer" if name.startswith("gpt2") else "model"
  assert int(cache[backbone]["index"]) == LENGTH
  np.testing.assert_array_equal(np.asarray(cache[backbone]["next_position"]),
                                mask.sum(axis=1))
  assert max(errors) <= TOLERANCE, (name, errors)


@pytest.mark.parametrize("layout", ["sharded-safetensors", "pytorch-bin"])
def test_other_weight_layouts(tmp_path, layout):
  """A sharded safetensors index and a torch `.bin` give the same parameters."""
  model = _hf_model("phi3-fused", seed=4)
  model.save_pretrained(tmp_path / "single")
  if layout == "sharded-safetensors":
    model.save_pretrained(tmp_path / "other", max_shard_size="30KB")
    assert (tmp_path / "other" / "model.safetensors.index.json").is_file()
    shards = set(json.loads((tmp_path / "other" / "model.safetensors.index.json")
                            .read_text())["weight_map"].values())
    assert len(shards) > 2
  else:
    (tmp_path / "other").mkdir()
    torch.save(model.state_dict(), str(tmp_path / "other" / "pytorch_model.bin"))
    (tmp_path / "other" / "config.json").write_text(
        (tmp_path / "single" / "config.json").read_text())
  config, params = checkpoints.load(tmp_path / "single")
  other_config, other = checkpoints.load(tmp_path / "other")
  assert other_config == config
  flat, other_flat = (jax.tree_util.tree_flatten_with_path(p)[0] for p in (params, other))
  assert [k for k, _ in flat] == [k for k, _ in other_flat]
  for (key, a), (_, b) in zip(flat, other_flat):
    np.testing.assert_array_equal(a, b, err_msg=str(key))
