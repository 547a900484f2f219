"""The shipped tiny T5 (prompt_tuning/assets/tiny_t5) and configs/models/tiny_bundled.gin."""
import hashlib
import json

import gin
import numpy as np
import pytest

from prompt_tuning import checkpoints, cli
from prompt_tuning.tiny import assets, corpus

MAX_ASSET_BYTES = 20 * 2**20


@pytest.fixture(scope="module")
def manifest():
  return json.loads(assets.MANIFEST_PATH.read_text())


def test_assets_are_small_and_match_the_manifest(manifest):
  files = [p for p in assets.ASSET_DIR.rglob("*") if p.is_file()]
  assert sum(p.stat().st_size for p in files) <= MAX_ASSET_BYTES
  listed = set(manifest["files"])
  on_disk = {str(p.relative_to(assets.ASSET_DIR)) for p in files
             if p.name != assets.MANIFEST_FILE}
  assert listed == on_disk
  for name, digest in manifest["files"].items():
    data = (assets.ASSET_DIR / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest, name


def test_manifest_documents_how_the_model_was_made(manifest):
  assert manifest["command"].startswith("JAX_PLATFORMS=cpu python scripts/pretrain_tiny")
  assert manifest["seed"] == 0
  assert manifest["steps"]["total"] > 0
  assert 1_000_000 <= manifest["parameter_count"] <= 5_000_000
  assert manifest["heldout_loss_tolerance"] > 0
  # The skills a prompt should select: the task word switches them on.
  sentiment = manifest["heldout_accuracy"]["sentiment"]
  assert sentiment["with_prefix"] >= 95.0
  assert sentiment["without_prefix"] <= 60.0


def test_normal_loader_reads_the_bundled_checkpoint(manifest):
  config, params = checkpoints.load(assets.CHECKPOINT_PATH)
  assert config.to_dict() == dict(manifest["config"])
  assert config.vocab_size % 128 == 0
  count = sum(np.asarray(x).size for x in
              __import__("jax").tree_util.tree_leaves(params))
  assert count == manifest["parameter_count"]


def test_model_gin_binds_the_bundled_config_checkpoint_and_vocab(manifest):
  gin.clear_config()
  try:
    cli.parse_gin(["models/tiny_bundled.gin"])
    config = cli.macro("MODEL_CONFIG")
    stored = dict(manifest["config"])
    stored["dropout_rate"] = 0.1  # the gin's fine-tuning dropout
    assert config.to_dict() == stored
    assert cli.macro("INITIAL_CHECKPOINT_PATH") == str(assets.CHECKPOINT_PATH)
    import tasks  # pylint: disable=g-import-not-at-top
    assert tasks.vocabulary_path() == str(assets.VOCAB_PATH)
  finally:
    gin.clear_config()


def test_class_label_init_uses_the_bundled_vocabulary():
  from prompt_tuning.methods import initializers  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import pretraining  # pylint: disable=g-import-not-at-top
  _, params = checkpoints.load(assets.CHECKPOINT_PATH)
  embedding = np.asarray(params["token_embedder"]["embedding"])
  init = initializers.class_labels(labels=list(corpus.LABELS["sentiment"]),
                                   vocabulary=str(assets.VOCAB_PATH))
  import jax  # pylint: disable=g-import-not-at-top
  prompt = np.asarray(init(jax.random.PRNGKey(0), (4, embedding.shape[1]), embedding))
  tokenizer = pretraining.Tokenizer(str(assets.VOCAB_PATH))
  for row, label in enumerate(corpus.LABELS["sentiment"]):
    (token,) = tokenizer.encode(label)
    np.testing.assert_allclose(prompt[row], embedding[token], rtol=1e-6)
