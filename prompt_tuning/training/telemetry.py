"""Prompt telemetry during training: is the prompt drifting, and are LoPA gates stuck?

At every train log line the trainer writes (TensorBoard `train/telemetry/…` and a
`{"task": "telemetry"}` line in metrics.jsonl):

  prompt_norm          mean L2 norm of the trained prompt vectors (every `[.., P, H]`
                       prompt array of the method: a prompt, a bank, LoPA's Z_S)
  embedding_norm       mean L2 norm of the frozen vocabulary embeddings
  prompt_norm_ratio    prompt_norm / embedding_norm (prompts far above 1 sit
                       outside the region of the model's own token embeddings)
  cosine_to_init       mean cosine between each prompt vector and its value at
                       initialization (1 at the start; falling as it moves)

and, for LoPA's gate variant, from the forward pass on the training batch (the
`LopaPrompt` sows them; `LossFn(telemetry=True)` collects them, averaged over the
steps since the last log line):

  gate_near_0 / gate_near_1   the share of gate values σ(u vᵀ) below 0.05 /
                              above 0.95 (`lopa.GATE_EDGE`; saturated gates
                              pass almost no gradient)

The initialization is the method's initial prompt as built from the run's seed
(the entry point builds it the same way on a resumed run), so the cosine is to the
true start after a restart too.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.params import flatten
from prompt_tuning.run_dir import layout

TASK = layout.TELEMETRY_TASK  # the `task` of its metrics.jsonl lines
# Trainable arrays that are prompts: `…/prompt/prompt` [P, H] and banks'
# `…/prompt/prompts` [K, P, H].
PROMPT_PATH = re.compile(r"(.*/)?prompt/prompts?")
GATE_KEYS = ("gate_near_0", "gate_near_1")


def prompt_arrays(trainable: Mapping[str, Any]) -> Dict[str, Any]:
  """`{path: array}` of the trained prompt arrays (`PROMPT_PATH`, 2 or 3 dims)."""
  return {k: v for k, v in flatten(trainable).items()
          if PROMPT_PATH.fullmatch(k) and np.ndim(v) in (2, 3)}


@jax.jit
def _stats(prompts, initial, embedding):
  width = embedding.shape[-1]
  now = jnp.concatenate([jnp.reshape(p, (-1, width)) for p in prompts]).astype(
      jnp.float32)  # [N, H]
  start = jnp.concatenate([jnp.reshape(p, (-1, width)) for p in initial]).astype(
      jnp.float32)
  norms = jnp.linalg.norm(now, axis=-1)
  start_norms = jnp.linalg.norm(start, axis=-1)
  cosine = jnp.sum(now * start, axis=-1) / jnp.maximum(norms * start_norms, 1e-12)
  embedding_norm = jnp.mean(jnp.linalg.norm(embedding.astype(jnp.float32), axis=-1))
  prompt_norm = jnp.mean(norms)
  return {"prompt_norm": prompt_norm, "embedding_norm": embedding_norm,
          "prompt_norm_ratio": prompt_norm / embedding_norm,
          "cosine_to_init": jnp.mean(cosine)}


def prompt_stats(trainable: Mapping[str, Any], initial: Mapping[str, Any],
                 embedding: Any) -> Dict[str, float]:
  """The prompt telemetry (module docstring) of `trainable` against `initial`
  (same tree) and the frozen `embedding [V, H]`; {} when nothing is a prompt."""
  now = prompt_arrays(trainable)
  if not now or embedding is None:
    return {}
  start = prompt_arrays(initial)
  paths = sorted(now)
  out = _stats([now[p] for p in paths], [start[p] for p in paths], embedding)
  return {k: float(v) for k, v in jax.device_get(out).items()}


def collected_gates(intermediates: Mapping[str, Any]) -> Dict[str, jax.Array]:
  """Averages every sown `gate_near_*` value of a model's `intermediates`."""
  found: Dict[str, list] = {k: [] for k in GATE_KEYS}
  for path, value in flatten(dict(intermediates)).items():
    key = path.split("/")[-1]
    if key in found:
      found[key].extend(value if isinstance(value, (tuple, list)) else [value])
  return {k: jnp.mean(jnp.stack(v)) for k, v in found.items() if v}
