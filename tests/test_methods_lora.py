"""LoRA: parameters beside their kernels, B = 0 start, merge, dropout, training,
decoding, and the PEFT adapter format checked against PEFT in PyTorch."""
import functools
import json
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import infer as infer_lib
from prompt_tuning.checkpoints import peft_adapters
from prompt_tuning import params as base
from prompt_tuning.methods import lora as lora_lib
from prompt_tuning.methods.lora import lora
from prompt_tuning.models.layers import Dense

from conftest import REPO_ROOT
from methods_testlib import (abstract_params, batch, changed_after_steps,
                             one_layer_config, random_params, tiny_config)
from methods_testlib import loss as eager_loss


def loss(model, params, enc, dec, tgt):
  return jax.jit(functools.partial(eager_loss, model))(params, enc, dec, tgt)
from peft_testlib import hf_checkpoint, hf_loss, hf_model, ours_loss  # noqa: F401


@pytest.fixture(scope="module")
def setup():
  config = one_layer_config()
  method = lora(rank=3, alpha=6.0)
  model = method.build(config)
  enc, dec, tgt = batch()
  params = random_params(model, enc, dec)  # B is random here, not zero
  return config, method, model, params, (enc, dec, tgt)


def test_factors_live_beside_their_kernels_with_sharding_axes(setup):
  _, _, model, _, (enc, dec, _) = setup
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec)["params"])
  flat = flax.traverse_util.flatten_dict(boxed, sep="/")
  lora_paths = sorted(p for p in flat if "lora" in p)
  # query and value of encoder self-, decoder self- and cross-attention, 1+1 layers.
  assert len(lora_paths) == 2 * 2 * (1 + 2)
  for path in lora_paths:
    module, name = path.rsplit("/", 1)
    assert module.rsplit("/", 1)[1] in ("query", "value"), path
    kernel = flat[f"{module}/kernel"]
    leaf = flat[path]
    if name == "lora_a":
      assert leaf.value.shape == (kernel.value.shape[0], 3)
      assert leaf.names == (kernel.names[0], "lora_rank")
    else:
      assert leaf.value.shape == (3, kernel.value.shape[1])
      assert leaf.names == ("lora_rank", kernel.names[1])
  # The frozen paths are exactly those of the plain model.
  plain = abstract_params(model.clone(adapter=None), enc, dec)
  assert sorted(p for p in flat if "lora" not in p) == sorted(base.flatten(plain))


class _OneQuery(flax.linen.Module):
  """A Dense named like an attention query, run under the LoRA hook."""

  @flax.linen.compact
  def __call__(self, x):
    with flax.linen.intercept_methods(functools.partial(lora(rank=3, targets=("query",)).adapter,
                                                        deterministic=True)):
      return Dense(5, ("embed", "joined_kv"), name="query")(x)


def test_init_is_uniform_a_and_zero_b(setup):
  x = jnp.ones((2, 32))
  variables = flax.linen.unbox(_OneQuery().init(jax.random.PRNGKey(1), x))["params"]
  a, b = variables["query"]["lora_a"], variables["query"]["lora_b"]
  assert a.shape == (32, 3) and b.shape == (3, 5)
  assert not np.any(b)
  assert np.all(np.abs(a) <= 1 / np.sqrt(32)) and np.std(a) > 0.5 / np.sqrt(3 * 32)


def test_zero_b_gives_the_frozen_model(setup):
  _, _, model, params, (enc, dec, tgt) = setup
  flat = base.flatten(params)
  start = base.unflatten({p: (np.zeros_like(v) if p.endswith("lora_b") else v)
                          for p, v in flat.items()})
  plain_params = base.unflatten({p: v for p, v in flat.items() if "lora" not in p})
  np.testing.assert_allclose(loss(model, start, enc, dec, tgt),
                             loss(model.clone(adapter=None), plain_params, enc, dec,
                                  tgt), rtol=1e-6)
  assert abs(loss(model, params, enc, dec, tgt) -
             loss(model, start, enc, dec, tgt)) > 1e-4


def test_update_is_scaled_low_rank_product(setup):
  """The adapted query kernel acts as W + (alpha / r) A B: check one layer directly."""
  _, method, model, params, (enc, dec, tgt) = setup
  assert lora_lib.lora_scale(method) == 2.0
  flat = base.flatten(params)
  m = "encoder/layers_0/attention/query"
  a, b = flat[f"{m}/lora_a"], flat[f"{m}/lora_b"]
  manual = dict(flat)
  del manual[f"{m}/lora_a"], manual[f"{m}/lora_b"]
  manual[f"{m}/kernel"] = flat[f"{m}/kernel"] + 2.0 * a @ b
  # Only this module's factors removed: the remaining ones still adapt.
  hook = lora_lib.LoraHook((r"(?!encoder/layers_0/attention/query$).*attention/(query|value)",),
                           3, 6.0)
  partial = model.clone(adapter=hook)
  np.testing.assert_allclose(loss(model, params, enc, dec, tgt),
                             loss(partial, base.unflatten(manual), enc, dec, tgt),
                             rtol=1e-5)


def test_merge_gives_a_plain_t5_with_the_same_logits(setup):
  _, method, model, params, (enc, dec, _) = setup
  merged = lora_lib.merged(method, params)
  assert not any("lora" in p for p in base.flatten(merged))
  plain = model.clone(adapter=None)
  np.testing.assert_allclose(jax.jit(plain.apply)({"params": merged}, enc, dec),
                             jax.jit(model.apply)({"params": params}, enc, dec),
                             atol=2e-5, rtol=2e-5)


def test_cached_decoding_matches_the_full_pass(setup):
  _, _, model, params, (enc, dec, _) = setup
  full = jax.jit(model.apply)({"params": params}, enc, dec)
  encoded, mask = jax.jit(functools.partial(model.apply, method=model.encode))(
      {"params": params}, enc)
  length = dec.shape[1]
  decode = jax.jit(functools.partial(model.apply, decode=True, max_decode_length=length,
                                     method=model.decode, mutable=["cache"]))
  _, variables = decode({"params": params}, encoded, mask, jnp.zeros_like(dec))
  cache = variables["cache"]
  for i in range(length):
    step, variables = decode({"params": params, "cache": cache}, encoded, mask,
                             dec[:, i:i + 1])
    cache = variables["cache"]
    np.testing.assert_allclose(step[:, 0], full[:, i], atol=1e-5, rtol=1e-5)


def test_dropout_acts_on_the_lora_input_only_when_training(setup):
  config, _, _, params, (enc, dec, _) = setup
  model = lora(rank=3, alpha=6.0, dropout_rate=0.5).build(config)
  run = lambda **kw: model.apply({"params": params}, enc, dec, **kw)
  np.testing.assert_array_equal(run(), run(enable_dropout=False))
  noisy = run(enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(3)})
  # config.dropout_rate is 0: any difference comes from LoRA's own dropout.
  assert config.dropout_rate == 0.0
  assert not np.allclose(noisy, run())


def test_two_steps_train_exactly_the_factors(setup):
  config, method, _, params, _ = setup
  changed, paths = changed_after_steps(method, config, params)
  assert changed == sorted(p for p in paths if p.endswith(("lora_a", "lora_b")))


def test_targets_select_kernels_and_typos_are_refused():
  config = tiny_config(num_encoder_layers=1, num_decoder_layers=1)
  enc, dec, _ = batch()
  method = lora(rank=2, targets=(r"encoder/.*/mlp/wo", r"decoder/logits_dense"))
  flat = base.flatten(abstract_params(method.build(config), enc, dec))
  assert sorted(p for p in flat if "lora" in p) == [
      "decoder/logits_dense/lora_a", "decoder/logits_dense/lora_b",
      "encoder/layers_0/mlp/wo/lora_a", "encoder/layers_0/mlp/wo/lora_b"]
  assert flat["decoder/logits_dense/lora_b"].shape == (2, config.vocab_size)
  with pytest.raises(ValueError, match="no '/kernel'"):
    lora(targets=(".*/query/kernel",))
  with pytest.raises(ValueError, match="not a regex"):
    lora(targets=("(",))
  with pytest.raises(ValueError, match="rank >= 1"):
    lora(rank=0)


# ---------------------------------------------------------------- PEFT format


def test_exported_adapter_gives_the_same_loss_in_peft(hf_checkpoint, tmp_path):
  peft = pytest.importorskip("peft")
  config, frozen, ours, data = ours_loss(hf_checkpoint, None)
  method = lora(rank=2, alpha=5.0)
  model = method.build(config)
  enc, dec, tgt = data
  params = random_params(model, enc, dec, seed=4)
  flat = base.flatten(params)
  full = base.unflatten({**flat, **{p: v for p, v in base.flatten(frozen).items()}})
  trained = {p: v for p, v in base.flatten(full).items() if method.is_trainable(p)}
  directory = peft_adapters.save_lora(tmp_path / "lora", trained, config, alpha=5.0)
  stored = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
  assert stored["peft_type"] == "LORA" and stored["r"] == 2
  peft_model = peft.PeftModel.from_pretrained(hf_model(hf_checkpoint), directory)
  peft_model.eval()
  ours_value = float(loss(model, full, enc, dec, tgt))
  assert abs(ours_value - hf_loss(peft_model, enc, tgt)) < 1e-4
  # And it is not the frozen model's loss: the adapter does something.
  assert abs(ours_value - hf_loss(hf_model(hf_checkpoint), enc, tgt)) > 1e-3


def test_adapter_written_by_peft_imports_with_the_same_loss(hf_checkpoint, tmp_path):
  peft = pytest.importorskip("peft")
  torch = pytest.importorskip("torch")
  peft_model = peft.get_peft_model(
      hf_model(hf_checkpoint),
      peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=3,
                      target_modules=["q", "v", "wo"], lora_dropout=0.1))
  with torch.no_grad():  # PEFT starts B at zero: make the update visible
    for name, p in peft_model.named_parameters():
      if "lora_B" in name:
        p.normal_(0.0, 0.5)
  peft_model.save_pretrained(tmp_path / "from_peft")
  peft_model.eval()
  config, frozen, _, (enc, dec, tgt) = ours_loss(hf_checkpoint, None)
  flat, settings = peft_adapters.load_lora(tmp_path / "from_peft", config)
  assert settings["rank"] == 4 and settings["alpha"] == 3.0
  assert settings["dropout_rate"] == pytest.approx(0.1)
  method = lora(**settings)
  params = base.with_params(frozen, flat)
  ours_value = float(loss(method.build(config), params, enc, dec, tgt))
  assert abs(ours_value - hf_loss(peft_model, enc, tgt)) < 1e-4
  assert "encoder/layers_0/mlp/wo/lora_a" in flat


def test_unsupported_lora_variants_are_refused(hf_checkpoint, tmp_path):
  config, frozen, _, _ = ours_loss(hf_checkpoint, None)
  enc, dec, _ = batch()
  method = lora(rank=2)
  params = random_params(method.build(config), enc, dec)
  trained = {p: v for p, v in base.flatten(params).items() if method.is_trainable(p)}
  directory = peft_adapters.save_lora(tmp_path / "a", trained, config, alpha=2.0)
  adapter_config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
  adapter_config["use_dora"] = True
  (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(adapter_config))
  with pytest.raises(peft_adapters.PeftAdapterError, match="use_dora"):
    peft_adapters.load_lora(directory, config)
  adapter_config["use_dora"] = False
  adapter_config["peft_type"] = "IA3"
  (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(adapter_config))
  with pytest.raises(peft_adapters.PeftAdapterError, match="expected 'LORA'"):
    peft_adapters.load_lora(directory, config)
  bigger = config.replace(num_encoder_layers=0)
  adapter_config["peft_type"] = "LORA"
  (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(adapter_config))
  with pytest.raises(peft_adapters.PeftAdapterError, match="not a linear layer"):
    peft_adapters.load_lora(directory, bigger)
  del frozen


# ---------------------------------------------------------------- serving


def test_infer_merges_a_peft_adapter_into_the_frozen_kernels(tmp_path):
  config = one_layer_config()
  method = lora(rank=2, alpha=3.0)
  enc, dec, _ = batch()
  params = random_params(method.build(config), enc, dec, seed=5)
  trained = {p: v for p, v in base.flatten(params).items() if method.is_trainable(p)}
  adapter = peft_adapters.save_lora(tmp_path / "a", trained, config, alpha=3.0)
  prompt = np.zeros((2, config.emb_dim), np.float32)
  _, plain, _, _ = infer_lib.load_bank_model({"p": prompt}, config, None, seed=1)
  _, merged, _, _ = infer_lib.load_bank_model({"p": prompt}, config, None, seed=1,
                                              adapter=adapter)
  plain, merged = base.flatten(plain), base.flatten(merged)
  m = "decoder/layers_0/encoder_decoder_attention/value"
  expected = plain[f"{m}/kernel"] + 1.5 * trained[f"{m}/lora_a"] @ trained[f"{m}/lora_b"]
  np.testing.assert_allclose(merged[f"{m}/kernel"], expected, atol=1e-6)
  untouched = "encoder/layers_0/attention/key/kernel"
  np.testing.assert_array_equal(merged[untouched], plain[untouched])
  wider = one_layer_config(emb_dim=48)
  with pytest.raises(infer_lib.InferError, match="another model size"):
    infer_lib.load_bank_model({"p": np.zeros((2, 48), np.float32)}, wider, None,
                              adapter=adapter)


def test_factors_shard_with_their_kernels_on_a_model_parallel_mesh():
  """4 host devices, model axis 4: LoRA's B of a query kernel and A of an output
  kernel are split over heads like their kernels, IA3's scales too; the loss
  equals the unsharded one."""
  proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "adapter_mesh_worker.py")],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  lora_specs, ia3_specs = out["lora"]["specs"], out["ia3"]["specs"]
  assert out["lora"]["devices"] == 4
  assert lora_specs["encoder/layers_0/attention/query/lora_b"] == ["None", "model"]
  assert lora_specs["encoder/layers_0/attention/query/lora_a"] == ["None", "None"]
  assert lora_specs["encoder/layers_0/attention/out/lora_a"] == ["model", "None"]
  assert lora_specs["encoder/layers_0/attention/out/lora_b"] == ["None", "None"]
  assert ia3_specs["decoder/layers_0/mlp/wo/ia3_scale"] == ["model"]
  assert ia3_specs["encoder/layers_0/attention/key/ia3_scale"] == ["model"]
  for name in ("lora", "ia3"):
    assert out[name]["grad_finite"]
    assert abs(out[name]["sharded"] - out[name]["single"]) < 1e-5
