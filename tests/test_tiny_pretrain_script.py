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


def test_an_interrupted_pretraining_resumes_to_the_same_model(
    run, tmp_path, monkeypatch, capsys):
  """A crash right after the state saved at step 4 of 8, then a rerun that continues
  from it (after ignoring a state saved with other settings) and ends where the
  uninterrupted run did."""
  script, _, manifest = run
  args = ["--output_dir", str(tmp_path)] + SHORT + ["--checkpoint_every", "4"]
  (tmp_path / script.RESUME_DIR).mkdir(parents=True)
  (tmp_path / script.RESUME_DIR / "meta.json").write_text(
      json.dumps({"step": 3, "identity": {"other": "settings"}}))
  save = script.save_resume

  def save_then_crash(*args, **kwargs):
    save(*args, **kwargs)
    raise KeyboardInterrupt("stopped")

  with monkeypatch.context() as patch:
    patch.setattr(script, "save_resume", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
      script.main(args)
  assert "ignoring" in capsys.readouterr().out
  meta = json.loads((tmp_path / script.RESUME_DIR / "meta.json").read_text())
  assert meta["step"] == 4 and not (tmp_path / assets.MANIFEST_FILE).exists()
  again = script.main(args)
  assert "resumed at step 4/8" in capsys.readouterr().out
  assert again["heldout_loss"] == pytest.approx(manifest["heldout_loss"], abs=1e-4)
  assert not (tmp_path / script.RESUME_DIR).exists()
  assert not any(name.startswith(script.RESUME_DIR) for name in again["files"])


def test_span_objectives_have_no_lm_stage():
  script = _script()
  args = script.parse_args(["--objective", "span_sentinel"])
  assert (args.span_steps, args.lm_steps) == (1500, 0)
  assert script.parse_args([]).lm_steps == 1500
  assert script.schedule(1498, args.span_steps) == "span_corruption"
  with pytest.raises(SystemExit):
    script.parse_args(["--objective", "span_only", "--lm_steps", "3"])


def test_default_output_dir_is_the_cache(monkeypatch, tmp_path):
  from prompt_tuning.tiny import sizes  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(sizes.CACHE_ENV, str(tmp_path))
  args = _script().parse_args(["--size", "5m", "--objective", "span_only",
                               "--seed", "2"])
  assert args.output_dir == str(tmp_path / "tiny" / "5m_span_only_s2")
  assert (args.emb_dim, args.mlp_dim) == (256, 1024)
  assert _script().parse_args(["--size", "5m", "--emb_dim", "96"]).emb_dim == 96
