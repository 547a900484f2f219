"""`T5Config.scan_layers`: layers run by `nn.scan`, parameters stacked on `layers`.

The scanned model (with and without remat) gives the plain model's loss and
gradients (float32, 1e-5) with the prompt and prefix hooks; checkpoints written
unstacked load stacked, and saves / exports give the T5X layer paths back; the
adapter hook and cached decoding are refused with a message naming the fix; gin
binds the field and the planner accepts it.
"""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers

import methods_testlib as ml
from prompt_tuning import building, checkpoints, configurables, partitioning, plan  # pylint: disable=unused-import  (configurables registers T5Config)
from prompt_tuning.methods import baselines, lora, prefix, prompt
from prompt_tuning.methods.base import Method
from prompt_tuning.models import decoding, scan
from prompt_tuning.params import flatten, unflatten
from prompt_tuning.models.config import T5Config
from prompt_tuning.training import trainer
from test_plan import frozen_bytes_by_hand

LAYERS = {"encoder": 2, "decoder": 2}


def _all_hooks() -> Method:
  """A prompt (input only) and encoder + decoder + cross prefixes, with every
  parameter trained: gradients of the stacked frozen layers are compared too."""
  return Method(name="model", prompt=prompt.prompt_tuning(length=3).prompt,
                prefix=prefix.prefix_tuning(length=2, hidden_dim=8,
                                            cross_attention=True).prefix,
                trainable=(".*",))


def _plain_params(method, config):
  return building.build_params(method, config, None, jax.random.PRNGKey(0))[1]


def _loss_and_grads(method, config, flat):
  enc, dec, tgt = ml.batch(size=3, inputs=9, targets=4)
  model = method.build(config)
  trainable = {k: v for k, v in flat.items() if method.is_trainable(k)}
  frozen = {k: v for k, v in flat.items() if not method.is_trainable(k)}

  def loss(t):
    return ml.loss(model, unflatten({**frozen, **t}), enc, dec, tgt)

  return jax.jit(jax.value_and_grad(loss))(trainable)


def test_scan_gives_the_plain_loss_and_gradients():
  method = _all_hooks()
  plain_config = ml.tiny_config()
  flat = flatten(_plain_params(method, plain_config))
  loss, grads = _loss_and_grads(method, plain_config, flat)
  stacked = scan.stack(flat, LAYERS)
  assert "encoder/layers/attention/query/kernel" in stacked
  assert stacked["encoder/layers/attention/query/kernel"].shape == (2, 32, 32)
  assert "encoder/prompt/prompt" in stacked and "prefix/cross/out_kernel" in stacked
  for policy in ("none", "full"):
    config = plain_config.replace(scan_layers=True, remat_policy=policy)
    s_loss, s_grads = _loss_and_grads(method, config, stacked)
    np.testing.assert_allclose(s_loss, loss, rtol=1e-5, atol=1e-6)
    s_grads = scan.unstack(s_grads)
    assert set(s_grads) == set(grads)
    for path in grads:
      np.testing.assert_allclose(s_grads[path], grads[path], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{policy}: {path}")


def test_per_example_prefixes_are_sliced_per_layer():
  # A prefix bank hands [B, L, P, N, D] prefixes with `visible [B, P]`.
  config = ml.tiny_config()
  flat = flatten(_plain_params(Method(name="model", trainable=()), config))
  enc, dec, _ = ml.batch(size=2, inputs=7)
  rng = np.random.RandomState(0)
  kv = lambda: jnp.asarray(rng.normal(size=(2, 2, 3, 4, 8)), jnp.float32)
  visible = jnp.asarray([[True, True, False], [True, False, False]])
  prefixes = {"encoder": (kv(), kv(), visible), "cross": (kv(), kv(), visible)}
  outs = []
  for scanned, params in ((False, flat), (True, scan.stack(flat, LAYERS))):
    model = Method(name="model", trainable=()).build(config.replace(scan_layers=scanned))
    def run(p, model=model):
      encoded, mask = model.apply({"params": p}, enc, prefixes=prefixes,
                                  method=lambda m, e, **kw: m.encoder(e, **kw))
      return model.apply({"params": p}, encoded, mask, dec, prefixes=prefixes,
                         method=lambda m, *a, **kw: m.decoder(*a, **kw))
    outs.append(np.asarray(jax.jit(run)(unflatten(params))))
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_checkpoints_load_stacked_and_save_unstacked(tmp_path):
  method = prompt.prompt_tuning(length=3)
  plain_config = ml.tiny_config()
  scan_config = plain_config.replace(scan_layers=True)
  plain = flatten(_plain_params(Method(name="model", trainable=()), plain_config))
  checkpoints.save(tmp_path / "native", unflatten(plain), plain_config)
  want = scan.stack(plain, LAYERS)
  _, loaded, _ = building.build_params(method, scan_config, str(tmp_path / "native"),
                                       jax.random.PRNGKey(1))
  _, on_mesh, _ = building.build_params(
      method, scan_config, str(tmp_path / "native"), jax.random.PRNGKey(1),
      mesh=partitioning.make_mesh(1, devices=jax.devices()[:1]))
  for tree in (loaded, on_mesh):
    got = flatten(tree)
    for path, value in want.items():
      np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=path)
    assert got["encoder/prompt/prompt"].shape == (3, 32)
  # A scanned tree saves under the T5X layer paths, readable by the plain model
  # (native) and by transformers (Hugging Face).
  checkpoints.save(tmp_path / "again", unflatten(want), scan_config)
  _, back = checkpoints.load(tmp_path / "again", plain_config)
  assert set(flatten(back)) == set(plain)
  checkpoints.save_huggingface(tmp_path / "hf", unflatten(want), plain_config)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf"))
  np.testing.assert_allclose(
      hf.encoder.block[1].layer[1].DenseReluDense.wo.weight.detach().numpy(),
      plain["encoder/layers_1/mlp/wo/kernel"].T, rtol=1e-6)


def test_exports_use_t5x_layer_paths_and_load_back():
  method = baselines.partial_tuning()
  config = ml.tiny_config(scan_layers=True)
  params = _plain_params(method, config)
  flat = flatten(params)
  assert flat["encoder/layers/pre_mlp_layer_norm/scale"].shape == (2, 32)
  exported = method.exported(params)
  assert "encoder.layers_1.pre_mlp_layer_norm.scale" in exported
  assert not any(".layers." in name for name in exported)
  new = {k: v + 1.0 for k, v in exported.items()}
  back = flatten(building.apply_exported(params, new))
  np.testing.assert_array_equal(back["encoder/layers/pre_mlp_layer_norm/scale"][1],
                                new["encoder.layers_1.pre_mlp_layer_norm.scale"])
  np.testing.assert_array_equal(back["encoder/layers/mlp/wo/kernel"],
                                flat["encoder/layers/mlp/wo/kernel"])
  with pytest.raises(ValueError, match=r"expected \(32,\)"):
    building.apply_exported(params, {"encoder.layers_0.pre_mlp_layer_norm.scale":
                                     np.zeros(5)})


def test_eval_and_infer_build_the_unscanned_model():
  from prompt_tuning import infer  # pylint: disable=g-import-not-at-top
  config = ml.tiny_config(scan_layers=True)
  assert scan.unscanned(config) == ml.tiny_config()
  assert scan.unscanned(ml.tiny_config()) == ml.tiny_config()
  record = {"model_config": config.to_dict(), "initial_checkpoint_path": None}
  _, served = infer.frozen_model_source({"/run": record}, None, None)
  assert served.scan_layers is False


def test_adapter_methods_and_cached_decoding_are_refused():
  config = ml.tiny_config(scan_layers=True)
  enc, dec, _ = ml.batch()
  with pytest.raises(ValueError, match="adapter hook.*scan_layers=False"):
    lora.lora(rank=2).build(config).init(jax.random.PRNGKey(0), enc, dec)
  model = Method(name="model", trainable=()).build(config)
  params = _plain_params(Method(name="model", trainable=()), config)
  with pytest.raises(ValueError, match="Cached decoding.*scan_layers=False"):
    decoding.greedy_decode(model, params, enc, max_decode_length=3, eos_id=-1)


def test_gin_binds_scan_layers_and_the_planner_accepts_it():
  gin.parse_config(["MODEL_CONFIG = @T5Config()", "T5Config.scan_layers = True",
                    "T5Config.num_encoder_layers = 1"])
  config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  assert config.scan_layers and config.num_encoder_layers == 1
  gin.clear_config()
  gin.parse_config(["MODEL_CONFIG = @t5_preset()", "t5_preset.name = 'tiny'",
                    "t5_preset.scan_layers = True"])
  assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn().scan_layers
  record = ml.tiny_config(scan_layers=True).to_dict()
  assert record["scan_layers"] is True and "scan_layers" not in ml.tiny_config().to_dict()
  assert T5Config.from_dict(record).scan_layers
  train_config = trainer.TrainConfig(model_dir="/nonexistent", mixture_or_task_name="x",
                                     task_feature_lengths={}, train_steps=1,
                                     batch_size=2)
  mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
  config = ml.one_layer_config(remat_policy="full", scan_layers=True)
  result = plan.plan(config, prompt.prompt_tuning(length=4), optax.adam(1e-3),
                     train_config, {"inputs": 8, "targets": 4}, mesh,
                     partitioning.rules())
  assert result["scan_layers"] is True
  b = result["bytes_per_device"]
  assert b["frozen"] == frozen_bytes_by_hand(config, model_ways=1)  # stacked, same bytes
  assert b["trainable"] == 4 * config.emb_dim * 4
  assert b["saved_residuals"] > 0 and 0 < b["recompute"]
