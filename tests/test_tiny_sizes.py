"""prompt_tuning/tiny/sizes.py: the named sizes have the parameter counts they
promise, and the bindings turn the bundled model gin into each size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.tiny import sizes


def _count(size: str) -> int:
  f = sizes.SIZES[size]
  config = T5Config(vocab_size=512, emb_dim=f["emb_dim"], num_heads=f["num_heads"],
                    head_dim=f["head_dim"], mlp_dim=f["mlp_dim"],
                    num_encoder_layers=f["num_layers"],
                    num_decoder_layers=f["num_layers"])
  tokens = jnp.ones((1, 2), jnp.int32)
  shapes = jax.eval_shape(lambda: Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens)["params"])
  return int(sum(np.prod(getattr(x, "value", x).shape)
                 for x in jax.tree_util.tree_leaves(
                     shapes, is_leaf=lambda x: hasattr(x, "value"))))


@pytest.mark.parametrize("size", list(sizes.SIZES))
def test_parameter_count_is_near_the_name(size):
  count = _count(size)
  nominal = sizes.NOMINAL_PARAMETERS[size]
  assert nominal / 1.3 < count < nominal * 1.3, (size, count)


def test_bundled_size_is_the_shipped_model():
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
  config, params = checkpoints.load(assets.CHECKPOINT_PATH)
  f = sizes.SIZES[sizes.BUNDLED_SIZE]
  assert (config.emb_dim, config.mlp_dim, config.num_encoder_layers) == (
      f["emb_dim"], f["mlp_dim"], f["num_layers"])
  assert _count(sizes.BUNDLED_SIZE) == sum(
      np.asarray(x).size for x in jax.tree_util.tree_leaves(params))
  assert sizes.is_bundled("1.3m", "lm_adapted") and not sizes.is_bundled(
      "5m", "lm_adapted") and not sizes.is_bundled("1.3m", "span_sentinel")


def test_cache_dirs_and_errors(monkeypatch, tmp_path):
  monkeypatch.setenv(sizes.CACHE_ENV, str(tmp_path))
  assert sizes.model_dir("20m", "span_only", 1) == tmp_path / "tiny" / "20m_span_only_s1"
  with pytest.raises(ValueError, match="choose one of"):
    sizes.model_dir("3m", "span_only")
  with pytest.raises(ValueError, match="objective"):
    sizes.model_dir("5m", "span")
