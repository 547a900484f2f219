"""scripts/pretrain_tiny.py end to end, shortened (a few steps, a smaller model)."""
import hashlib
import json
import pathlib

import numpy as np
import pytest

from conftest import load_script

from prompt_tuning import checkpoints
from prompt_tuning.tiny import assets, corpus

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT = ["--span_steps", "4", "--lm_steps", "4", "--batch_size", "8",
         "--vocab_documents", "300", "--emb_dim", "32", "--num_heads", "2",
         "--head_dim", "16", "--mlp_dim", "64", "--num_layers", "1",
         "--log_every", "4", "--warmup_steps", "2"]


def _script():
  return load_script("pretrain_tiny")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("tiny_t5")
  script = _script()
  manifest = script.main(["--output_dir", str(out)] + SHORT)
  return script, out, manifest


def test_writes_vocab_checkpoint_and_manifest(run):
  _, out, manifest = run
  on_disk = json.loads((out / assets.MANIFEST_FILE).read_text())
  assert on_disk == manifest
  assert manifest["command"].startswith("JAX_PLATFORMS=cpu python scripts/pretrain")
  assert "--span_steps 4" in manifest["command"]
  assert manifest["steps"]["total"] == 8
  assert set(manifest["heldout_accuracy"]) == set(corpus.TASKS)
  losses = manifest["heldout_loss"]
  assert all(np.isfinite(v) and v > 0 for v in losses.values())
  # Every file is listed with its real sha256.
  assert assets.VOCAB_FILE in manifest["files"]
  assert any(name.startswith(assets.CHECKPOINT_DIR + "/params")
             for name in manifest["files"])
  for name, digest in manifest["files"].items():
    assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_checkpoint_loads_with_the_normal_loader_and_reproduces_the_loss(run):
  script, out, manifest = run
  config, params = checkpoints.load(out / assets.CHECKPOINT_DIR)
  assert config.vocab_size % 128 == 0
  assert config.vocab_size >= manifest["vocabulary"]["pieces"] + 100
  assert config.emb_dim == 32 and config.num_encoder_layers == 1
  count = sum(np.asarray(x).size for x in
              __import__("jax").tree_util.tree_leaves(params))
  assert count == manifest["parameter_count"]
  # The loaded weights give the held-out loss written in the manifest.
  from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import pretraining  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  tokenizer = pretraining.Tokenizer(str(out / assets.VOCAB_FILE))
  _, eval_loss, _ = script.make_steps(Transformer(config), optax.sgd(0.0))
  losses = script.heldout_losses(params, eval_loss, tokenizer, 0, 8)
  assert losses == pytest.approx(manifest["heldout_loss"], abs=1e-3)


def test_training_lowers_the_loss_and_is_deterministic(run, tmp_path):
  script, out, manifest = run
  again = script.main(["--output_dir", str(tmp_path)] + SHORT)
  assert again["heldout_loss"] == pytest.approx(manifest["heldout_loss"], abs=1e-4)
  assert (tmp_path / assets.VOCAB_FILE).read_bytes() == (
      out / assets.VOCAB_FILE).read_bytes()
  # The initialization (same seed, no step) has a higher held-out loss.
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import pretraining  # pylint: disable=g-import-not-at-top
  config, _ = checkpoints.load(out / assets.CHECKPOINT_DIR)
  model = Transformer(config)
  dummy = jax.numpy.zeros([1, 4], jax.numpy.int32)
  init = nn.unbox(model.init(jax.random.PRNGKey(0), dummy, dummy)["params"])
  tokenizer = pretraining.Tokenizer(str(out / assets.VOCAB_FILE))
  _, eval_loss, _ = script.make_steps(model, optax.sgd(0.0))
  before = script.heldout_losses(init, eval_loss, tokenizer, 0, 8)
  assert before["mean"] > manifest["heldout_loss"]["mean"] + 0.05
