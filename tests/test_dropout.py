"""The model's dropout: nn.Dropout's semantics with a hashed mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import layers


def _apply(rate, x, seed=0, broadcast_dims=(), deterministic=False):
  module = layers.Dropout(rate, broadcast_dims=broadcast_dims)
  return module.apply({}, x, deterministic=deterministic,
                      rngs={"dropout": jax.random.PRNGKey(seed)})


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_drops_the_rate_and_scales_the_rest(rate):
  x = jnp.ones((64, 128, 32))
  y = np.asarray(_apply(rate, x))
  dropped = np.mean(y == 0)
  # 262,144 draws: the standard error of the fraction is < 0.001.
  assert abs(dropped - rate) < 0.005, dropped
  np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)
  # Each position is dropped independently of its row and column.
  per_row, per_col = np.mean(y == 0, axis=(1, 2)), np.mean(y == 0, axis=(0, 1))
  assert per_row.std() < 0.03 and per_col.std() < 0.03


def test_masks_differ_by_key_and_agree_for_the_same_key():
  x = jnp.ones((8, 256))
  a, b, a_again = _apply(0.5, x, 0), _apply(0.5, x, 1), _apply(0.5, x, 0)
  np.testing.assert_array_equal(a, a_again)
  overlap = np.mean((np.asarray(a) == 0) == (np.asarray(b) == 0))
  assert 0.45 < overlap < 0.55  # independent masks agree half the time


def test_neighbouring_bits_are_uncorrelated():
  bits = np.asarray(layers.hashed_bits(jnp.asarray([3, 7], jnp.uint32), (1 << 16,)))
  u = bits.astype(np.float64) / 2**32
  assert abs(u.mean() - 0.5) < 0.01
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
  assert len(np.unique(bits)) > 0.99 * bits.size


def test_broadcast_dims_share_the_mask():
  y = np.asarray(_apply(0.5, jnp.ones((4, 16, 8)), broadcast_dims=(-2,)))
  np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))
  assert 0 < np.mean(y == 0) < 1


def test_deterministic_and_zero_rate_pass_through_and_rate_one_zeroes():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 5))
  np.testing.assert_array_equal(_apply(0.5, x, deterministic=True), x)
  np.testing.assert_array_equal(_apply(0.0, x), x)
  np.testing.assert_array_equal(_apply(1.0, x), np.zeros((4, 5)))


def test_gradient_is_the_same_mask_and_scale():
  x = jax.random.normal(jax.random.PRNGKey(4), (16, 32))
  w = jax.random.normal(jax.random.PRNGKey(5), (16, 32))
  f = lambda x: jnp.sum(_apply(0.3, x) * w)
  grad = np.asarray(jax.grad(f)(x))
  kept = np.asarray(_apply(0.3, x)) != 0
  np.testing.assert_allclose(grad, np.where(kept, np.asarray(w) / 0.7, 0.0),
                             rtol=1e-6)
  # Under jit, and with the mask shared along a dimension, too.
  g = jax.jit(jax.grad(lambda x: jnp.sum(
      _apply(0.3, x, broadcast_dims=(0,)) * w)))(x)
  kept = np.asarray(_apply(0.3, x, broadcast_dims=(0,))) != 0
  np.testing.assert_allclose(g, np.where(kept, np.asarray(w) / 0.7, 0.0), rtol=1e-6)
