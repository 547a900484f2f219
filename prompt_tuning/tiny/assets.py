"""Where the bundled tiny T5 lives inside the installed package.

  prompt_tuning/assets/tiny_t5/
    sentencepiece.model   the vocabulary (BPE, 100 extra ids added on top)
    checkpoint/           native checkpoint: config.json + params/ (orbax)
    MANIFEST.json         how it was made, held-out numbers, sha256 of each file

Written by `scripts/pretrain_tiny.py`; read with `prompt_tuning.checkpoints.load`.
"""
from __future__ import annotations

import pathlib

ASSET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "tiny_t5"
VOCAB_FILE = "sentencepiece.model"
CHECKPOINT_DIR = "checkpoint"
MANIFEST_FILE = "MANIFEST.json"
EXTRA_IDS = 100

VOCAB_PATH = ASSET_DIR / VOCAB_FILE
CHECKPOINT_PATH = ASSET_DIR / CHECKPOINT_DIR
MANIFEST_PATH = ASSET_DIR / MANIFEST_FILE


def check_present() -> None:
  """Raises FileNotFoundError naming the missing asset and how to rebuild it."""
  for path in (VOCAB_PATH, CHECKPOINT_PATH / "config.json"):
    if not path.exists():
      raise FileNotFoundError(
          f"The bundled tiny T5 asset {path} is missing. Reinstall the package, or "
          "rebuild the assets with `JAX_PLATFORMS=cpu python scripts/pretrain_tiny.py`"
          " (about 20 minutes on 2 CPU cores).")
