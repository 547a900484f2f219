"""BitFit-style partial tuning: configs/methods/bitfit.gin trains exactly the RMS norm
scales of T5 1.1 (it has no biases), exports them by path, and they load back."""
import gin
import numpy as np
import pytest

from prompt_tuning import building
from prompt_tuning import params as base
from prompt_tuning import configurables  # noqa: F401  (registers methods.*)
from prompt_tuning.methods.baselines import partial_tuning
from prompt_tuning.models.t5 import Transformer

from conftest import REPO_ROOT
from methods_testlib import batch, changed_after_steps, random_params, tiny_config


@gin.configurable("bitfit_probe")
def probe(method=gin.REQUIRED):
  return method


@pytest.fixture(scope="module")
def method():
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [str(REPO_ROOT / "configs" / "methods" / "bitfit.gin")],
      ["bitfit_probe.method = %METHOD"], finalize_config=False)
  try:
    return probe()
  finally:
    gin.clear_config()


def test_gin_trains_every_norm_scale_and_nothing_else(method):
  config = tiny_config(num_encoder_layers=2, num_decoder_layers=3)
  enc, dec, _ = batch()
  params = random_params(Transformer(config), enc, dec)
  trained = sorted(p for p in base.flatten(params) if method.is_trainable(p))
  # 2 norms per encoder layer, 3 per decoder layer, 2 final norms.
  assert len(trained) == 2 * 2 + 3 * 3 + 2
  assert all(p.endswith("norm/scale") for p in trained)
  assert "encoder/encoder_norm/scale" in trained and "decoder/decoder_norm/scale" in trained
  assert method.name == "bitfit"


def test_a_step_changes_only_the_scales_and_they_load_back(method):
  config = tiny_config(num_encoder_layers=1, num_decoder_layers=1)
  enc, dec, _ = batch()
  params = random_params(Transformer(config), enc, dec)
  changed, paths = changed_after_steps(method, config, params)
  assert changed == sorted(p for p in paths if p.endswith("norm/scale"))
  exported = method.exported(params)
  assert sorted(exported) == sorted(p.replace("/", ".") for p in changed)
  shifted = {k: v + 1.0 for k, v in exported.items()}
  loaded = base.flatten(building.apply_exported(params, shifted))
  for name, value in shifted.items():
    np.testing.assert_array_equal(loaded[name.replace(".", "/")], value)


def test_empty_or_broken_regexes_are_refused():
  with pytest.raises(ValueError, match="at least one regex"):
    partial_tuning(regexes=())
  with pytest.raises(ValueError, match="not a regex"):
    partial_tuning(regexes=("[",))
