"""IA3: identity-initialized scales on keys, values and the MLP activation, merge,
training, and the PEFT IA3 format checked against PEFT in PyTorch."""
import functools
import json

import flax
import jax
import numpy as np
import pytest

from prompt_tuning.checkpoints import peft_adapters
from prompt_tuning import params as base
from prompt_tuning.methods import ia3 as ia3_lib
from prompt_tuning.methods.ia3 import ia3

from methods_testlib import (batch, changed_after_steps, one_layer_config,
                             random_params)
from methods_testlib import loss as eager_loss
from peft_testlib import hf_checkpoint, hf_loss, hf_model, ours_loss  # noqa: F401


def loss(model, params, enc, dec, tgt):
  return float(jax.jit(functools.partial(eager_loss, model))(params, enc, dec, tgt))


@pytest.fixture(scope="module")
def setup():
  config = one_layer_config()
  method = ia3()
  model = method.build(config)
  enc, dec, tgt = batch()
  params = random_params(model, enc, dec)  # scales ~ N(0, 0.1²): far from identity
  return config, method, model, params, (enc, dec, tgt)


def test_scales_live_beside_their_kernels_and_shard_with_them(setup):
  _, _, model, _, (enc, dec, _) = setup
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec)["params"])
  flat = flax.traverse_util.flatten_dict(boxed, sep="/")
  scales = {p: flat[p] for p in flat if "ia3" in p}
  assert sorted(scales) == sorted([
      "encoder/layers_0/attention/key/ia3_scale",
      "encoder/layers_0/attention/value/ia3_scale",
      "encoder/layers_0/mlp/wo/ia3_scale",
      "decoder/layers_0/self_attention/key/ia3_scale",
      "decoder/layers_0/self_attention/value/ia3_scale",
      "decoder/layers_0/encoder_decoder_attention/key/ia3_scale",
      "decoder/layers_0/encoder_decoder_attention/value/ia3_scale",
      "decoder/layers_0/mlp/wo/ia3_scale"])
  for path, leaf in scales.items():
    kernel = flat[path.replace("ia3_scale", "kernel")]
    if "/mlp/wo/" in path:  # scales the input: the kernel's rows
      assert leaf.value.shape == kernel.value.shape[:1] and leaf.names == ("mlp",)
    else:
      assert leaf.value.shape == kernel.value.shape[1:]
      assert leaf.names == ("joined_kv",)


def test_ones_give_the_frozen_model(setup):
  _, _, model, params, (enc, dec, tgt) = setup
  flat = base.flatten(params)
  ones = base.unflatten({p: (np.ones_like(v) if "ia3" in p else v)
                         for p, v in flat.items()})
  plain = base.unflatten({p: v for p, v in flat.items() if "ia3" not in p})
  assert abs(loss(model, ones, enc, dec, tgt) -
             loss(model.clone(adapter=None), plain, enc, dec, tgt)) < 1e-6
  assert abs(loss(model, params, enc, dec, tgt) - loss(model, ones, enc, dec, tgt)) > 1e-3


def test_merge_gives_a_plain_t5_with_the_same_logits(setup):
  _, method, model, params, (enc, dec, _) = setup
  merged = ia3_lib.merged(method, params)
  assert not any("ia3" in p for p in base.flatten(merged))
  np.testing.assert_allclose(
      jax.jit(model.clone(adapter=None).apply)({"params": merged}, enc, dec),
      jax.jit(model.apply)({"params": params}, enc, dec), atol=2e-5, rtol=2e-5)


def test_two_steps_train_exactly_the_scales(setup):
  config, method, _, params, _ = setup
  changed, paths = changed_after_steps(method, config, params)
  assert changed == sorted(p for p in paths if p.endswith("ia3_scale"))


def test_exported_adapter_gives_the_same_loss_in_peft(hf_checkpoint, tmp_path):
  peft = pytest.importorskip("peft")
  config, frozen, frozen_loss, (enc, dec, tgt) = ours_loss(hf_checkpoint, None)
  method = ia3()
  model = method.build(config)
  rng = np.random.default_rng(2)
  shapes = base.flatten(jax.eval_shape(
      lambda: flax.linen.unbox(model.init(jax.random.PRNGKey(0), enc, dec))["params"]))
  scales = {p: (1.0 + 0.5 * rng.standard_normal(s.shape)).astype(np.float32)
            for p, s in shapes.items() if "ia3" in p}
  params = base.with_params(frozen, scales)
  directory = peft_adapters.save_ia3(tmp_path / "ia3", scales, config,
                                     input_modules=[p.rsplit("/", 1)[0] for p in scales
                                                    if "/mlp/wo/" in p])
  stored = json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())
  assert stored["peft_type"] == "IA3"
  assert all(m.endswith("DenseReluDense.wo") for m in stored["feedforward_modules"])
  peft_model = peft.PeftModel.from_pretrained(hf_model(hf_checkpoint), directory)
  peft_model.eval()
  ours = loss(model, params, enc, dec, tgt)
  assert abs(ours - hf_loss(peft_model, enc, tgt)) < 1e-4
  assert abs(ours - frozen_loss) > 1e-3
  # ... and back: the same arrays and targets.
  flat, settings = peft_adapters.load_ia3(directory, config)
  assert sorted(flat) == sorted(scales)
  for p in flat:
    np.testing.assert_array_equal(flat[p], scales[p])
  again = ia3(**settings)
  assert loss(again.build(config), params, enc, dec, tgt) == pytest.approx(ours, abs=1e-6)


def test_adapter_written_by_peft_imports_with_the_same_loss(hf_checkpoint, tmp_path):
  peft = pytest.importorskip("peft")
  torch = pytest.importorskip("torch")
  peft_model = peft.get_peft_model(hf_model(hf_checkpoint),
                                   peft.IA3Config(task_type="SEQ_2_SEQ_LM"))
  with torch.no_grad():
    for name, p in peft_model.named_parameters():
      if "ia3_l" in name:
        p.copy_(1.0 + 0.5 * torch.randn_like(p))
  peft_model.save_pretrained(tmp_path / "from_peft")
  peft_model.eval()
  config, frozen, _, (enc, dec, tgt) = ours_loss(hf_checkpoint, None)
  flat, settings = peft_adapters.load_ia3(tmp_path / "from_peft", config)
  assert len(flat) == 2 * 3 + 2 * 5  # k, v, wo per encoder layer; + cross k, v
  method = ia3(**settings)
  ours = loss(method.build(config), base.with_params(frozen, flat), enc, dec, tgt)
  assert abs(ours - hf_loss(peft_model, enc, tgt)) < 1e-4


def test_ia3_adapter_is_not_read_as_lora_and_bad_shapes_are_refused(tmp_path):
  config = one_layer_config()
  scales = {"encoder/layers_0/attention/key/ia3_scale": np.ones(32, np.float32)}
  directory = peft_adapters.save_ia3(tmp_path / "x", scales, config, input_modules=[])
  with pytest.raises(peft_adapters.PeftAdapterError, match="expected 'LORA'"):
    peft_adapters.load_lora(directory, config)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({"base_model.model.encoder.block.0.layer.0.SelfAttention.k.ia3_l":
             np.ones((4, 8), np.float32)}, str(tmp_path / "x" / "adapter_model.safetensors"))
  with pytest.raises(peft_adapters.PeftAdapterError, match=r"\[out, 1\] or \[1, in\]"):
    peft_adapters.load_ia3(directory, config)
