"""LoPA runs, prefix-tuned runs and plain prompts in one batch: every example's
output equals serving it alone (teacher-forced logits and greedy decodes)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import lopa_bank
from prompt_tuning.methods.lopa import LopaPrompt
from prompt_tuning.methods.prefix import FoldedPrefix
from prompt_tuning.models import decoding
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.params import flatten, with_params

CONFIG = preset("tiny", vocab_size=64, dropout_rate=0.0)
L_ENC, L_DEC = CONFIG.num_encoder_layers, CONFIG.num_decoder_layers
N, D, H = CONFIG.num_heads, CONFIG.head_dim, CONFIG.emb_dim
ENTRIES = {"boolq": lopa_bank.LopaEntry(length=3, rank=2, hidden_dim=8,
                                        features="encoder", variant="gate"),
           "cb": lopa_bank.LopaEntry(length=2, rank=1, hidden_dim=4,
                                     features="embeddings", variant="concat")}


def _prefix_export(rng, length):
  return {f"prefix.{stack}.{kind}": rng.normal(size=(layers, length, N, D)).astype(
      np.float32) for stack, layers in (("encoder", L_ENC), ("decoder", L_DEC))
          for kind in ("key", "value")}


def _lopa_export(rng, entry):
  """A LoPA run's export (`encoder.prompt.…` names), large enough to matter."""
  module = entry.module("prefix", None)
  x, mask = jnp.zeros((1, 2, H)), jnp.ones((1, 2), bool)
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(
      jax.random.PRNGKey(0), x, mask, features=jnp.zeros((1, H))))["params"])
  return {"encoder.prompt." + k.replace("/", "."): rng.normal(
      size=v.shape).astype(np.float32) * 0.5 for k, v in flatten(shapes).items()}


@pytest.fixture(scope="module")
def setup():
  dummy = np.ones((1, 4), np.int32)
  frozen = nn.meta.unbox(jax.jit(lambda r: Transformer(CONFIG).init(
      r, dummy, dummy)["params"])(jax.random.PRNGKey(0)))
  rng = np.random.default_rng(3)
  prompts = {"rte": rng.normal(size=(2, H)).astype(np.float32)}
  prefixes = {"sst2": _prefix_export(rng, 3)}
  lopas = {name: (entry, _lopa_export(rng, entry)) for name, entry in ENTRIES.items()}
  bank, prefix_bank, params = lopa_bank.mixed_banks(frozen, CONFIG, prompts, prefixes,
                                                    lopas)
  model = Transformer(CONFIG, prompt=bank, prefix=prefix_bank)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 6), 2, 64)
  tokens = tokens.at[1, 4:].set(0).at[2, 3:].set(0)
  names = ["boolq", "rte", "cb", "sst2"]
  index = jnp.asarray(bank.indices(names))
  return frozen, prompts, prefixes, lopas, model, params, tokens, names, index


def alone(frozen, prompts, prefixes, lopas, name):
  """The model and parameters that serve `name` by itself (its own method)."""
  if name in prompts:
    bank, bank_params = bank_lib.from_prompts({name: prompts[name]})
    return Transformer(CONFIG, prompt=bank), bank_lib.with_bank(frozen, bank_params)
  if name in lopas:
    entry, export = lopas[name]
    module = LopaPrompt(length=entry.length, rank=entry.rank,
                        hidden_dim=entry.hidden_dim, dropout_rate=0.0,
                        features=entry.features, variant=entry.variant)
    tree = {k.replace(".", "/"): jnp.asarray(v) for k, v in export.items()}
    return Transformer(CONFIG, prompt=module), with_params(frozen, tree)
  export = prefixes[name]
  tree = {f"prefix/{stack}/{kind}": export[f"prefix.{stack}.{kind}"]
          for stack in ("encoder", "decoder") for kind in ("key", "value")}
  length = export["prefix.encoder.key"].shape[1]
  return Transformer(CONFIG, prefix=FoldedPrefix(length=length)), with_params(
      frozen, tree)


def test_bank_layout_paths_and_lengths(setup):
  _, _, _, _, model, params, _, _, _ = setup
  bank = model.prompt
  assert bank.names == ("rte", "sst2", "boolq", "cb")
  assert bank.row_lengths == (2, 0, 3, 4)  # concat doubles P
  assert bank.needs_encoder_features
  paths = {k for k in flatten(params) if k.startswith("encoder/prompt/")}
  assert "encoder/prompt/prompts" in paths
  assert "encoder/prompt/lopa_2/u_head/out_kernel" in paths
  assert "encoder/prompt/lopa_3/prompt" in paths


def test_mixed_teacher_forced_logits_equal_each_alone(setup):
  frozen, prompts, prefixes, lopas, model, params, tokens, names, index = setup
  decoder_inputs = jax.random.randint(jax.random.PRNGKey(2), (4, 4), 2, 64)
  mixed = jax.jit(model.apply)({"params": params}, tokens, decoder_inputs,
                               prompt_index=index)
  for b, name in enumerate(names):
    single, single_params = alone(frozen, prompts, prefixes, lopas, name)
    expected = jax.jit(single.apply)({"params": single_params}, tokens[b:b + 1],
                            decoder_inputs[b:b + 1])
    np.testing.assert_allclose(mixed[b], expected[0], rtol=1e-5, atol=1e-5,
                               err_msg=name)
  # The check can fail: routing an example to another entry changes its logits.
  wrong = jax.jit(model.apply)({"params": params}, tokens, decoder_inputs,
                      prompt_index=jnp.roll(index, 1))
  assert not np.allclose(wrong[0], mixed[0], atol=1e-3)
  assert not np.allclose(wrong[2], mixed[2], atol=1e-3)


def test_mixed_greedy_decodes_equal_each_alone(setup):
  frozen, prompts, prefixes, lopas, model, params, tokens, names, index = setup
  greedy = decoding.greedy_decode(model, params, tokens, max_decode_length=5,
                                  prompt_index=index)
  for b, name in enumerate(names):
    single, single_params = alone(frozen, prompts, prefixes, lopas, name)
    np.testing.assert_array_equal(
        greedy[b], decoding.greedy_decode(single, single_params, tokens[b:b + 1],
                                          max_decode_length=5)[0], err_msg=name)


def test_lopa_exports_with_wrong_shapes_or_missing_arrays_are_refused(setup):
  frozen, _, _, lopas, _, _, _, _, _ = setup
  entry, export = lopas["boolq"]
  wider = lopa_bank.LopaEntry(length=3, rank=3, hidden_dim=8)
  with pytest.raises(ValueError, match="u_head/out_kernel has shape"):
    lopa_bank.mixed_banks(frozen, CONFIG, {}, {}, {"boolq": (wider, export)})
  partial = {k: v for k, v in export.items() if "v_head" not in k}
  with pytest.raises(ValueError, match="has no encoder.prompt.v_head"):
    lopa_bank.mixed_banks(frozen, CONFIG, {}, {}, {"boolq": (entry, partial)})
  with pytest.raises(ValueError, match="names must differ"):
    lopa_bank.mixed_banks(frozen, CONFIG, {"boolq": np.zeros((2, H))}, {},
                          {"boolq": (entry, export)})


def _lopa_run(path, entry, export):
  from prompt_tuning.run_dir import train_state as ckpt  # pylint: disable=g-import-not-at-top
  ckpt.check_or_write_run_config(str(path), {
      "method": "lopa", "initial_checkpoint_path": None,
      "model_config": CONFIG.to_dict(), "prompt_combine": "prefix",
      "method_spec": {"factory": "methods.lopa", "arguments": {
          "length": entry.length, "rank": entry.rank,
          "hidden_dim": entry.hidden_dim, "dropout_rate": 0.1,
          "features": entry.features, "variant": entry.variant,
          "combine": "prefix"}}})
  ckpt.export_step(str(path), 1, export)


def test_infer_serves_lopa_and_prefix_model_dirs_mixed_with_a_plain_prompt(
    tmp_path, setup):
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import without_params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.run_dir import train_state as ckpt  # pylint: disable=g-import-not-at-top
  _, _, prefixes, lopas, _, _, _, _, _ = setup
  for name, (entry, export) in lopas.items():
    _lopa_run(tmp_path / name, entry, export)
  ckpt.check_or_write_run_config(str(tmp_path / "sst2"), {
      "method": "prefix", "initial_checkpoint_path": None,
      "model_config": CONFIG.to_dict()})
  ckpt.export_step(str(tmp_path / "sst2"), 1, prefixes["sst2"])
  prompt = np.random.default_rng(5).normal(size=(3, H)).astype(np.float32)
  np.save(tmp_path / "rte.npy", prompt)
  sources = {"rte": str(tmp_path / "rte.npy"), "boolq": str(tmp_path / "boolq"),
             "sst2": str(tmp_path / "sst2"), "cb": str(tmp_path / "cb")}
  model, params, bank, _ = infer_lib.load_bank_model(sources, None, None)
  assert set(bank.names) == set(sources)
  frozen = without_params(without_params(params, "prefix"), "encoder/prompt")
  tokens = jax.random.randint(jax.random.PRNGKey(4), (3, 5), 2, 64)
  names = ["cb", "boolq", "sst2"]
  logits = jax.jit(model.apply)({"params": params}, tokens, tokens[:, :3],
                       prompt_index=jnp.asarray(bank.indices(names)))
  for b, name in enumerate(names):  # (greedy decodes: the tests above)
    single, single_params = alone(frozen, {"rte": prompt}, prefixes, lopas, name)
    np.testing.assert_allclose(
        logits[b], jax.jit(single.apply)({"params": single_params},
                                         tokens[b:b + 1], tokens[b:b + 1, :3])[0],
        atol=1e-5, rtol=1e-5)


def test_infer_refuses_a_lopa_run_without_its_method_spec(tmp_path, setup):
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.run_dir import train_state as ckpt  # pylint: disable=g-import-not-at-top
  _, _, _, lopas, _, _, _, _, _ = setup
  ckpt.check_or_write_run_config(str(tmp_path / "old"), {
      "method": "lopa", "initial_checkpoint_path": None,
      "model_config": CONFIG.to_dict()})
  ckpt.export_step(str(tmp_path / "old"), 1, lopas["boolq"][1])
  with pytest.raises(infer_lib.InferError, match="records no method_spec"):
    infer_lib.load_bank_model({"old": str(tmp_path / "old")}, None, None)


def test_a_trained_lopa_run_is_served_mixed_like_its_own_model(tmp_path):
  """The real export of a LoPA training run (names, shapes, config.json) through
  infer's loader, next to a plain prompt."""
  import trainer_testlib as tl  # pylint: disable=g-import-not-at-top
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.lopa import lopa  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import without_params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.run_dir import layout  # pylint: disable=g-import-not-at-top
  settings = dict(length=2, rank=1, hidden_dim=4, dropout_rate=0.0,
                  features="encoder", variant="gate", combine="prefix")
  method = lopa(**settings)
  config = tl.tiny_config(dropout_rate=0.0)
  train_lib.build_and_train(
      tl.train_config(tmp_path / "run", train_steps=2), method=method,
      model_config=config, optimizer=tl.adam(0.1), batches_fn=tl.fixed_batches(8),
      identity={"method_spec": {"factory": "methods.lopa", "arguments": settings}})
  prompt = np.random.default_rng(1).normal(size=(3, config.emb_dim)).astype(np.float32)
  model, params, bank, _ = infer_lib.load_bank_model(
      {"plain": prompt, "lopa": str(tmp_path / "run")}, None, None,
      checkpoint="latest")
  frozen = without_params(params, "encoder/prompt")
  trained = {k.replace(".", "/"): jnp.asarray(v) for k, v in
             layout.exported_arrays(tmp_path / "run", "latest").items()}
  tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 6), 3, 250)
  index = jnp.asarray(bank.indices(["lopa", "plain"]))
  mixed = jax.jit(model.apply)({"params": params}, tokens, tokens[:, :3],
                               prompt_index=index)
  alone_lopa = jax.jit(method.build(config).apply)(
      {"params": with_params(frozen, trained)}, tokens[:1], tokens[:1, :3])
  np.testing.assert_allclose(mixed[0], alone_lopa[0], atol=1e-5, rtol=1e-5)
  single, single_params = bank_lib.from_prompts({"plain": prompt})
  alone_plain = jax.jit(Transformer(config, prompt=single).apply)(
      {"params": bank_lib.with_bank(frozen, single_params)}, tokens[1:], tokens[1:, :3])
  np.testing.assert_allclose(mixed[1], alone_plain[0], atol=1e-5, rtol=1e-5)


def test_mixed_rank_classification_scores_equal_each_alone(setup):
  from prompt_tuning.inference import ranking  # pylint: disable=g-import-not-at-top
  frozen, prompts, prefixes, lopas, model, params, tokens, names, index = setup
  labels = jnp.asarray([[5, 6, 1], [7, 1, 0], [9, 9, 9]], jnp.int32)
  _, mixed = ranking.rank_classify(model, params, tokens, labels, prompt_index=index)
  for b, name in enumerate(names):
    single, single_params = alone(frozen, prompts, prefixes, lopas, name)
    _, expected = ranking.rank_classify(single, single_params, tokens[b:b + 1], labels)
    np.testing.assert_allclose(mixed[b], expected[0], rtol=1e-5, atol=1e-5,
                               err_msg=name)
