"""The one set of weights and inputs every contender uses.

`Prepare` (run once per benchmark run, in its own worker) initializes a random
T5.1.1 with our initializers and writes it as a Hugging Face directory
(`save_huggingface`: `config.json` + `model.safetensors`), which both our loader
(`prompt_tuning.checkpoints.load`) and `T5ForConditionalGeneration.from_pretrained`
read; plus the `[P, H]` prompt (U[-0.5, 0.5], the paper's random init) and a bank of
K prompts as `.npy` files. Token batches come from `batch()`, a fixed numpy seed.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from benchmarks.common import Shapes

MODEL_DIR = "hf_model"
PROMPT_FILE = "prompt.npy"
BANK_FILE = "bank.npy"  # [K, P, H]


def batch(shapes: Shapes, vocab_size: int, seed: int = 0) -> Dict[str, np.ndarray]:
  """A full (unpadded) T5X-style batch of random token ids.

  `encoder_input_tokens [B, T_in]`, `decoder_target_tokens [B, T_out]`,
  `decoder_input_tokens` (targets shifted right, starting from 0, as T5X's feature
  converter and Hugging Face's `shift_tokens_right` both build them) and
  `decoder_loss_weights [B, T_out]` (all ones). Ids avoid 0 (pad) and 1 (EOS).
  """
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab_size, (shapes.batch, shapes.inputs), dtype=np.int32)
  targets = rng.integers(2, vocab_size, (shapes.batch, shapes.targets), dtype=np.int32)
  decoder_inputs = np.concatenate(
      [np.zeros((shapes.batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets, np.float32)}


def decoder_step_bytes(params) -> int:
  """Bytes a cached decoding step must read: every decoder kernel and the output
  projection, except cross-attention's key/value kernels (applied to the encoder
  output once, by a cache); the token embedding is read one row per token."""
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  return sum(int(v.nbytes) for k, v in flatten(params).items()
             if k.startswith("decoder/") and not (
                 "encoder_decoder_attention/key" in k or
                 "encoder_decoder_attention/value" in k))


class Prepare:
  """Worker contender that writes the shared weights into `directory`."""

  def __init__(self, shapes: Dict[str, Any], directory: str, seed: int = 0):
    self.shapes = Shapes.from_dict(shapes)
    self.directory = directory
    self.seed = seed

  def setup(self) -> Dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    from prompt_tuning.checkpoints.huggingface import save_huggingface  # pylint: disable=g-import-not-at-top
    from prompt_tuning.building import init_inputs  # pylint: disable=g-import-not-at-top
    from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top
    import flax.linen as nn  # pylint: disable=g-import-not-at-top

    config = self.shapes.model_config()
    model = Transformer(config)
    enc, dec = init_inputs()
    params = jax.jit(lambda rng: nn.unbox(model.init(rng, enc, dec)["params"]))(
        jax.random.PRNGKey(self.seed))
    params = jax.tree_util.tree_map(np.asarray, params)
    save_huggingface(os.path.join(self.directory, MODEL_DIR), params, config)
    rng = np.random.default_rng(self.seed + 1)
    shape = (self.shapes.prompt, config.emb_dim)
    np.save(os.path.join(self.directory, PROMPT_FILE),
            rng.uniform(-0.5, 0.5, shape).astype(np.float32))
    np.save(os.path.join(self.directory, BANK_FILE),
            rng.uniform(-0.5, 0.5, (self.shapes.bank_size,) + shape).astype(np.float32))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    return {"directory": self.directory, "num_params": num_params,
            "decoder_step_bytes": decoder_step_bytes(params),
            "model_config": config.to_dict()}

  def rep(self) -> Dict[str, Any]:
    return {}

  def finish(self) -> Dict[str, Any]:
    return {}
