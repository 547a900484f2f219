"""Named sizes and pretraining objectives of the tiny T5 family, and where they live.

The bundled model (`prompt_tuning/assets/tiny_t5/`) is size `1.3m` pretrained with
`lm_adapted`. The others are pretrained on demand by `scripts/pretrain_tiny.py`
into a cache directory outside git:

  $PROMPT_TUNING_CACHE/tiny/<size>_<objective>_s<seed>/   (default root
  ~/.cache/prompt_tuning), holding sentencepiece.model, checkpoint/, MANIFEST.json.

Objectives, after Lester et al. 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning", §3.2 and Figure 3(d):

  span_only      span corruption (T5's objective) only: stage 1 of the bundled recipe.
  span_sentinel  the SAME pretrained model as `span_only`; what changes is downstream:
                 "we use the same model, but prepend all downstream targets with a
                 sentinel, so as to more closely resemble the targets seen in
                 pretraining" (§3.2). The replication trains it on the task's
                 `_1_sentinel` twin (tasks/registry.add_sentinel_twin): <extra_id_0>
                 appended to the inputs and leading the targets, stripped from the
                 predictions before scoring.
  lm_adapted     span corruption, then LM adaptation (prefix LM): the bundled recipe.
"""
from __future__ import annotations

import os
import pathlib
from typing import Dict, Optional

# Architecture fields of T5Config per size name; every size has 512 vocabulary rows.
# Parameter counts: 0.03m 35,136; 0.1m 107,136; 0.3m 361,472; 1.3m 1,312,512; 5m
# 4,984,064; 20m 19,405,312 (tests/test_tiny_sizes.py checks each within 1.3x of its
# name).
SIZES: Dict[str, Dict[str, int]] = {
    "0.03m": dict(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=64, num_layers=2),
    "0.1m": dict(emb_dim=32, num_heads=4, head_dim=8, mlp_dim=128, num_layers=2),
    "0.3m": dict(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=256, num_layers=2),
    "1.3m": dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_layers=2),
    "5m": dict(emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024, num_layers=2),
    "20m": dict(emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048, num_layers=2),
}
# Roughly the parameter count each name promises (checked within a factor of 1.3).
NOMINAL_PARAMETERS = {"0.03m": 0.03e6, "0.1m": 0.1e6, "0.3m": 0.3e6, "1.3m": 1.3e6,
                      "5m": 5e6, "20m": 20e6}
BUNDLED_SIZE = "1.3m"
OBJECTIVES = ("span_only", "span_sentinel", "lm_adapted")
BUNDLED_OBJECTIVE = "lm_adapted"
# Which pretraining run each objective's model is (span_sentinel reuses span_only).
PRETRAINED_AS = {"span_only": "span_only", "span_sentinel": "span_only",
                 "lm_adapted": "lm_adapted"}
CACHE_ENV = "PROMPT_TUNING_CACHE"


def check(size: str, objective: str) -> None:
  if size not in SIZES:
    raise ValueError(f"Unknown tiny size {size!r}; choose one of {list(SIZES)}.")
  if objective not in OBJECTIVES:
    raise ValueError(f"Unknown pretraining objective {objective!r}; choose one of "
                     f"{list(OBJECTIVES)}.")


def cache_root() -> pathlib.Path:
  """$PROMPT_TUNING_CACHE/tiny, else ~/.cache/prompt_tuning/tiny."""
  root = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "prompt_tuning"
  return pathlib.Path(root).expanduser() / "tiny"


def model_dir(size: str, objective: str, seed: int = 0,
              root: Optional[pathlib.Path] = None) -> pathlib.Path:
  """The directory of one pretrained tiny model (`<size>_<objective>_s<seed>`)."""
  check(size, objective)
  return pathlib.Path(root or cache_root()) / f"{size}_{objective}_s{seed}"


def is_bundled(size: str, objective: str, seed: int = 0) -> bool:
  """True for the model shipped in prompt_tuning/assets/tiny_t5 (no pretraining)."""
  return (size, PRETRAINED_AS[objective], seed) == (BUNDLED_SIZE, BUNDLED_OBJECTIVE,
                                                    0)


def gin_bindings(size: str, checkpoint_path: str) -> Dict[str, object]:
  """Bindings that turn configs/models/tiny_bundled.gin into this size's model."""
  fields = SIZES[size]
  return {"T5Config.emb_dim": fields["emb_dim"],
          "T5Config.num_heads": fields["num_heads"],
          "T5Config.head_dim": fields["head_dim"],
          "T5Config.mlp_dim": fields["mlp_dim"],
          "T5Config.num_encoder_layers": fields["num_layers"],
          "T5Config.num_decoder_layers": fields["num_layers"],
          "INITIAL_CHECKPOINT_PATH": str(checkpoint_path)}
