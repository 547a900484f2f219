"""Where the bundled tiny T5 lives inside the installed package.

  prompt_tuning/assets/tiny_t5/
    sentencepiece.model   the vocabulary (BPE, 100 extra ids added on top)
    checkpoint/           native checkpoint: config.json + params/ (orbax)
    MANIFEST.json         how it was made, held-out numbers, sha256 of each file

Written by `scripts/pretrain_tiny.py`; read with `prompt_tuning.checkpoints.load`.
"""
from __future__ import annotations

import pathlib
from typing import Optional

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


# A run records its frozen checkpoint by absolute path (config.json). For the bundled
# model that path names a checkout, not a model: the same file of a moved checkout,
# a code snapshot or another installation is the same model (the run's
# model_fingerprint.json guards against a rebuilt one).
_PACKAGE_ASSETS = ("prompt_tuning", "assets")


def bundled_name(path: Optional[str]) -> Optional[str]:
  """`tiny_t5/checkpoint` for a path inside any `prompt_tuning/assets/` directory
  (this installation's or another's), else None."""
  if not path or "://" in str(path):
    return None
  parts = pathlib.PurePath(str(path)).parts
  for i in range(len(parts) - 2, -1, -1):
    if parts[i:i + 2] == _PACKAGE_ASSETS and len(parts) > i + 2:
      return "/".join(parts[i + 2:])
  return None


def same_model_path(a: Optional[str], b: Optional[str]) -> bool:
  """Whether two recorded checkpoint paths name the same model: equal, or the same
  bundled asset in two locations."""
  return a == b or (bundled_name(a) is not None and bundled_name(a) == bundled_name(b))


def locate(path: Optional[str]) -> Optional[str]:
  """A recorded checkpoint path as this installation can read it: a bundled asset
  recorded in a checkout that moved or is gone becomes this installation's copy;
  every other path is returned unchanged (a missing one fails where it is read)."""
  name = bundled_name(path)
  if name is None or pathlib.Path(str(path)).exists():
    return path
  here = ASSET_DIR.parent / name
  return str(here) if here.exists() else path
