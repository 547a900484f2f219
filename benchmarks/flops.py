"""FLOPs of the prompt-tuning train step, counted from the shapes, and the machine's
dense matmul rate (the limit the step is measured against).

Count (multiply-add = 2 FLOPs; only matmuls, which is where the time should go):
B batch, S = T_in + P encoder length (prompt included), T = T_out decoder length,
H model width, K = N * D attention width, F MLP width, V vocabulary, L_e / L_d
layers.

Forward:
  encoder, per layer:   projections  2*B*S*H*K * 4            (q, k, v, out)
                        attention    2*B*S*S*K * 2            (q·k, weights·v)
                        MLP          2*B*S*H*F * 3            (wi_0, wi_1, wo)
  decoder, per layer:   self-attn.   2*B*T*H*K * 4 + 2*B*T*T*K * 2
                        cross-attn.  2*B*T*H*K * 2            (q, out)
                                   + 2*B*S*H*K * 2            (k, v of the encoder)
                                   + 2*B*T*S*K * 2            (q·k, weights·v)
                        MLP          2*B*T*H*F * 3
  logits:               2*B*T*H*V
  position biases:      2*N*S*S*R + 2*N*T*T*R  (once per stack: a one-hot
                        contraction with the `[N, R]` bucket table, R buckets)

Backward (prompt tuning: the weights are frozen, so no weight gradients): every
matmul with a frozen weight, y = x W, costs one more matmul of the same size for
dx = dy Wᵀ; every activation-by-activation matmul (q·k, weights·v) costs two, one
per operand. The gradient reaches the prompt through the whole encoder and, via
cross-attention, the whole decoder except what in the first decoder layer only
sees the decoder tokens: its self-attention (all of it) and, in its
cross-attention, the query projection and the query side of q·k. Autodiff never
builds those (the tangents are symbolic zeros) and this count leaves them out:

  train = forward + backward
        = 2 * (weight matmuls) + 3 * (activation matmuls) + position biases
          - [first decoder layer: 2*B*T*H*K * 4 + 2*B*T*T*K * 4   (self-attention)
                                + 2*B*T*H*K     + 2*B*T*S*K       (cross queries)]

(the position-bias tables are frozen and the one-hot constant: no backward). This
is exactly the sum of 2 * (output size) * (contracted size) over the `dot_general`s
JAX traces for the step (checked in tests/test_benchmarks.py); XLA's cost analysis
counts a few percent more because it also counts elementwise work.

`weight_gradients=True` adds the dW matmuls (model tuning): one more matmul per
weight matmul, and the full decoder backward.
"""
from __future__ import annotations

import time
from typing import Any, Dict

from benchmarks.common import Shapes


def train_step_flops(shapes: Shapes, weight_gradients: bool = False
                     ) -> Dict[str, float]:
  """Forward / backward / total matmul FLOPs of one prompt-tuning train step."""
  cfg = shapes.model_config()
  b, s, t = shapes.batch, shapes.inputs + shapes.prompt, shapes.targets
  h, k, f, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  mm = lambda *dims: 2.0 * _prod(dims)

  enc_weights = mm(b, s, h, k) * 4 + mm(b, s, h, f) * 3
  enc_acts = mm(b, s, s, k) * 2
  dec_self_weights = mm(b, t, h, k) * 4
  dec_self_acts = mm(b, t, t, k) * 2
  dec_cross_weights = mm(b, t, h, k) * 2 + mm(b, s, h, k) * 2
  dec_cross_acts = mm(b, t, s, k) * 2
  dec_mlp = mm(b, t, h, f) * 3
  dec_weights = dec_self_weights + dec_cross_weights + dec_mlp
  dec_acts = dec_self_acts + dec_cross_acts
  logits = mm(b, t, h, v)
  n, r = cfg.num_heads, cfg.relative_attention_num_buckets
  position_biases = mm(n, s, s, r) + mm(n, t, t, r)

  weight_mm = (cfg.num_encoder_layers * enc_weights +
               cfg.num_decoder_layers * dec_weights + logits)
  act_mm = cfg.num_encoder_layers * enc_acts + cfg.num_decoder_layers * dec_acts
  forward = weight_mm + act_mm + position_biases
  backward = weight_mm + 2 * act_mm
  if weight_gradients:
    backward += weight_mm
  else:
    # The first decoder layer's parts that only see the decoder tokens.
    backward -= (dec_self_weights + 2 * dec_self_acts +
                 mm(b, t, h, k) + mm(b, t, s, k))
  return {"forward": forward, "backward": backward, "total": forward + backward}


def _prod(dims) -> float:
  out = 1.0
  for d in dims:
    out *= d
  return out


class Matmul:
  """Worker contender: the machine's dense float32 matmul rate, jitted JAX.

  Each repetition chains `[n, n] @ [n, n]` products inside one jitted
  `fori_loop` (dispatch cost amortized; each product depends on the previous,
  rescaled to stay finite) for about `seconds` of work.
  """

  def __init__(self, shapes: Dict[str, Any]):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    self.jax, self.jnp = jax, jnp
    shapes = Shapes.from_dict(shapes)
    self.n = shapes.matmul
    self.seconds = shapes.matmul_seconds

  def setup(self) -> Dict[str, Any]:
    jax, jnp = self.jax, self.jnp
    n = self.n
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    self.a = jax.random.normal(key_a, (n, n), jnp.float32)
    self.b = jax.random.normal(key_b, (n, n), jnp.float32) / n**0.5

    @jax.jit
    def chain(a, b, count):
      return jax.lax.fori_loop(0, count, lambda i, x: x @ b, a)

    self.chain = chain
    start = time.perf_counter()
    chain(self.a, self.b, 1).block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    chain(self.a, self.b, 2).block_until_ready()
    per_matmul = (time.perf_counter() - start) / 2
    self.count = max(1, int(self.seconds / max(per_matmul, 1e-6)))
    return {"n": n, "matmuls_per_rep": self.count, "first_call_seconds": first}

  def rep(self) -> Dict[str, Any]:
    start = time.perf_counter()
    self.chain(self.a, self.b, self.count).block_until_ready()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "flops_per_second": 2.0 * self.n**3 * self.count / seconds}

  def finish(self) -> Dict[str, Any]:
    return {}
