"""Prefix-tuned runs and plain prompts in one batch: every example's output equals
serving it alone (teacher-forced logits and greedy/beam decodes)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import prefix_bank
from prompt_tuning.methods.prefix import FoldedPrefix
from prompt_tuning.models import decoding
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.params import with_params

CONFIG = preset("tiny", vocab_size=64, dropout_rate=0.0)
L_ENC, L_DEC = CONFIG.num_encoder_layers, CONFIG.num_decoder_layers
N, D, H = CONFIG.num_heads, CONFIG.head_dim, CONFIG.emb_dim


def _prefix_export(rng, length):
  out = {}
  for stack, layers in (("encoder", L_ENC), ("decoder", L_DEC)):
    for kind in ("key", "value"):
      out[f"prefix.{stack}.{kind}"] = rng.normal(
          size=(layers, length, N, D)).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def setup():
  dummy = np.ones((1, 4), np.int32)
  frozen = nn.meta.unbox(jax.jit(lambda r: Transformer(CONFIG).init(
      r, dummy, dummy)["params"])(jax.random.PRNGKey(0)))
  rng = np.random.default_rng(3)
  prompts = {"rte": rng.normal(size=(2, H)).astype(np.float32)}
  prefixes = {"sst2": _prefix_export(rng, 3), "mrpc": _prefix_export(rng, 1)}
  prompt_bank, prefix_bank_, params = prefix_bank.mixed_banks(
      frozen, CONFIG, prompts, prefixes)
  model = Transformer(CONFIG, prompt=prompt_bank, prefix=prefix_bank_)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (5, 6), 2, 64)
  tokens = tokens.at[1, 4:].set(0)
  names = ["sst2", "rte", "mrpc", "sst2", "rte"]
  index = jnp.asarray(prompt_bank.indices(names))
  return frozen, prompts, prefixes, model, params, tokens, names, index


def alone(frozen, prompts, prefixes, name):
  """The model and parameters that serve `name` by itself."""
  if name in prompts:
    bank, bank_params = bank_lib.from_prompts({name: prompts[name]})
    return Transformer(CONFIG, prompt=bank), bank_lib.with_bank(frozen, bank_params)
  export = prefixes[name]
  tree = {f"prefix/{stack}/{kind}": export[f"prefix.{stack}.{kind}"]
          for stack in ("encoder", "decoder") for kind in ("key", "value")}
  length = export["prefix.encoder.key"].shape[1]
  return Transformer(CONFIG, prefix=FoldedPrefix(length=length)), with_params(
      frozen, tree)


def test_mixed_teacher_forced_logits_equal_each_alone(setup):
  frozen, prompts, prefixes, model, params, tokens, names, index = setup
  decoder_inputs = jax.random.randint(jax.random.PRNGKey(2), (5, 4), 2, 64)
  mixed = model.apply({"params": params}, tokens, decoder_inputs, prompt_index=index)
  for b, name in enumerate(names):
    single, single_params = alone(frozen, prompts, prefixes, name)
    expected = single.apply({"params": single_params}, tokens[b:b + 1],
                            decoder_inputs[b:b + 1])
    np.testing.assert_allclose(mixed[b], expected[0], rtol=1e-5, atol=1e-5,
                               err_msg=name)
  # The check can fail: another example's prefix gives other logits.
  wrong = model.apply({"params": params}, tokens, decoder_inputs,
                      prompt_index=jnp.roll(index, 1))
  assert not np.allclose(wrong[0], mixed[0], atol=1e-3)


def test_mixed_greedy_and_beam_decodes_equal_each_alone(setup):
  frozen, prompts, prefixes, model, params, tokens, names, index = setup
  greedy = decoding.greedy_decode(model, params, tokens, max_decode_length=5,
                                  prompt_index=index)
  beams, _ = decoding.beam_search(model, params, tokens, max_decode_length=4,
                                  beam_size=2, prompt_index=index)
  for b, name in enumerate(names):
    single, single_params = alone(frozen, prompts, prefixes, name)
    np.testing.assert_array_equal(
        greedy[b], decoding.greedy_decode(single, single_params, tokens[b:b + 1],
                                          max_decode_length=5)[0], err_msg=name)
    np.testing.assert_array_equal(
        beams[b], decoding.beam_search(single, single_params, tokens[b:b + 1],
                                       max_decode_length=4, beam_size=2)[0][0],
        err_msg=name)


def test_prefix_bank_refuses_a_missing_index_and_bad_shapes(setup):
  _, _, _, model, params, tokens, _, _ = setup
  with pytest.raises(ValueError, match="pass prompt_index"):
    model.apply({"params": params}, tokens, tokens[:, :2])
  with pytest.raises(ValueError, match="length >= 1"):
    prefix_bank.PrefixBank(lengths=(0, 0))
  bad = _prefix_export(np.random.default_rng(0), 2)
  bad["prefix.decoder.value"] = bad["prefix.decoder.value"][:, :, :1]
  with pytest.raises(ValueError, match="prefix.decoder.value has shape"):
    prefix_bank.stack_prefixes([bad], CONFIG)


def test_infer_serves_a_prefix_model_dir_mixed_with_a_plain_prompt(tmp_path):
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import without_params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.run_dir import train_state as ckpt  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  run = tmp_path / "sst2_prefix"
  ckpt.check_or_write_run_config(str(run), {
      "method": "prefix", "initial_checkpoint_path": None,
      "model_config": CONFIG.to_dict()})
  export = _prefix_export(rng, 2)
  ckpt.export_step(str(run), 1, export)
  prompt = rng.normal(size=(3, H)).astype(np.float32)
  np.save(tmp_path / "rte.npy", prompt)
  model, params, bank, _ = infer_lib.load_bank_model(
      {"rte": str(tmp_path / "rte.npy"), "sst2": str(run)}, None, None)
  assert bank.names == ("rte", "sst2") and bank.lengths == (3, 0)
  frozen = without_params(without_params(params, "prefix"), "encoder/prompt")
  tokens = jax.random.randint(jax.random.PRNGKey(4), (3, 5), 2, 64)
  names = ["sst2", "rte", "sst2"]
  greedy = decoding.greedy_decode(model, params, tokens, max_decode_length=4,
                                  prompt_index=jnp.asarray(bank.indices(names)))
  for b, name in enumerate(names):
    single, single_params = alone(frozen, {"rte": prompt}, {"sst2": export}, name)
    np.testing.assert_array_equal(
        greedy[b], decoding.greedy_decode(single, single_params, tokens[b:b + 1],
                                          max_decode_length=4)[0], err_msg=name)
