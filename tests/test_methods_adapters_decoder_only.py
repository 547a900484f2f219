"""LoRA and IA3 on the decoder-only families against PEFT: the same random adapter
weights in PyTorch (PEFT's default targets for GPT-2 and Llama) and here give the
same logits; merging folds them into the kernels; per-layer prompts are refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.methods import deep_prompt
from prompt_tuning.methods import ia3 as ia3_lib
from prompt_tuning.methods import lora as lora_lib
from prompt_tuning.models import families
from prompt_tuning.params import flatten, unflatten

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

RANK, ALPHA = 3, 6.0


def _hf(family):
  torch.manual_seed(0)
  if family == "gpt2":
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=89, n_positions=32, n_embd=24, n_layer=2, n_head=3,
        initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=89, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
      num_attention_heads=6, num_key_value_heads=2, initializer_range=0.2,
      rms_norm_eps=1e-5, max_position_embeddings=32))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def frozen(request, tmp_path_factory):
  """(family, directory of the saved HF model, our config, our params)."""
  path = tmp_path_factory.mktemp(request.param)
  _hf(request.param).eval().save_pretrained(path)
  config, params = checkpoints.load(path)
  return request.param, path, config, params


def _tokens():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 89, (2, 9))
  mask = np.ones_like(tokens)
  mask[1, 6:] = 0
  return tokens, mask


def _logits(model, params, tokens, mask):
  fn = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))
  return np.asarray(fn(params, jnp.asarray(tokens), jnp.asarray(mask, bool)))


def _peft_logits(peft_model, tokens, mask):
  with torch.no_grad():
    return peft_model(input_ids=torch.tensor(tokens),
                      attention_mask=torch.tensor(mask)).logits.numpy()


def _our_module_path(family, peft_name):
  """PEFT's module name (`...h.0.attn.c_attn`) → our module path."""
  parts = peft_name.split(".")
  start = (parts.index("transformer") if family == "gpt2" else
           parts.index("layers") - 1)  # PEFT wraps: base_model.model.model.layers
  parts = parts[start:]
  out = []
  for i, part in enumerate(parts):
    if part.isdigit():
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return "/".join(out).replace("/layers/", "/layers_").replace("/h/", "/h_")


def _adapted_params(peft_model, family, params, pieces, expected):
  """Our params plus the PEFT model's adapter tensors, `pieces(name, module) ->
  {our leaf name: array}` per adapted module (`expected` of them)."""
  flat = dict(flatten(params))
  count = 0
  for name, module in peft_model.named_modules():
    got = pieces(name, module)
    if got:
      count += 1
      for leaf, value in got.items():
        flat[f"{_our_module_path(family, name)}/{leaf}"] = value
  assert count == expected
  return unflatten(flat)


def test_lora_equals_peft_with_the_same_weights(frozen):
  family, path, config, params = frozen
  peft_model = peft.get_peft_model(
      type(_hf(family)).from_pretrained(path),
      peft.LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False)).eval()
  width = config.emb_dim

  def pieces(name, module):
    if not hasattr(module, "lora_A"):
      return {}
    a = module.lora_A["default"].weight.detach().numpy().T  # [in, r]
    b = module.lora_B["default"].weight.detach().numpy().T  # [r, out]
    if name.endswith("c_attn"):
      b = b.reshape(RANK, 3, width)
    return {"lora_a": a, "lora_b": b}

  method = lora_lib.lora(rank=RANK, alpha=ALPHA)
  # PEFT's defaults: GPT-2 c_attn; Llama q_proj, v_proj (per layer, 2 layers).
  adapted = _adapted_params(peft_model, family, params, pieces,
                            {"gpt2": 2, "llama": 4}[family])
  model = method.build(config)
  tokens, mask = _tokens()
  ours = _logits(model, adapted, tokens, mask)
  reference = _peft_logits(peft_model, tokens, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-4, rtol=1e-4)
  frozen_logits = _logits(families.build(config), params, tokens, mask)
  assert np.abs(ours - frozen_logits).max() > 1e-2  # the adapter matters
  merged = _logits(families.build(config), lora_lib.merged(method, adapted), tokens,
                   mask)
  np.testing.assert_allclose(merged[real], ours[real], atol=1e-4, rtol=1e-4)


def test_ia3_equals_peft_with_the_same_weights(frozen):
  family, path, config, params = frozen
  peft_model = peft.get_peft_model(
      type(_hf(family)).from_pretrained(path),
      peft.IA3Config(init_ia3_weights=False)).eval()
  width = config.emb_dim

  def pieces(name, module):
    if not hasattr(module, "ia3_l"):
      return {}
    scale = module.ia3_l["default"].detach().numpy().reshape(-1)
    if name.endswith("c_attn"):
      scale = scale.reshape(3, width)
    return {"ia3_scale": scale}

  with torch.no_grad():  # far from ones, so that every scale matters
    for _, module in peft_model.named_modules():
      if hasattr(module, "ia3_l"):
        module.ia3_l["default"].uniform_(0.5, 1.5)
  method = ia3_lib.ia3()
  # PEFT's defaults: GPT-2 c_attn, mlp.c_proj; Llama k_proj, v_proj, down_proj.
  adapted = _adapted_params(peft_model, family, params, pieces,
                            {"gpt2": 4, "llama": 6}[family])
  model = method.build(config)
  tokens, mask = _tokens()
  ours = _logits(model, adapted, tokens, mask)
  reference = _peft_logits(peft_model, tokens, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], reference[real], atol=1e-4, rtol=1e-4)
  merged = _logits(families.build(config), ia3_lib.merged(method, adapted), tokens,
                   mask)
  np.testing.assert_allclose(merged[real], ours[real], atol=1e-4, rtol=1e-4)


def test_per_layer_prompts_are_refused_on_decoder_only_models(frozen):
  _, _, config, _ = frozen
  with pytest.raises(ValueError, match="per-layer prompts.*T5 models only"):
    deep_prompt.per_layer_prompt(length=2).build(config)
