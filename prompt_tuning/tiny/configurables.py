"""Gin registrations for the bundled tiny T5 (imported by configs/models/tiny_bundled.gin).

  tiny_t5.checkpoint_path()   the bundled native checkpoint directory
  tiny_t5.vocabulary_path()   the bundled SentencePiece model

Both resolve inside the installed package, so the gin file works from any directory.
"""
import gin

from prompt_tuning.tiny import assets


@gin.configurable(module="tiny_t5")
def checkpoint_path() -> str:
  """`prompt_tuning/assets/tiny_t5/checkpoint` (a native checkpoint)."""
  assets.check_present()
  return str(assets.CHECKPOINT_PATH)


@gin.configurable(module="tiny_t5")
def vocabulary_path() -> str:
  """`prompt_tuning/assets/tiny_t5/sentencepiece.model` (100 extra ids on top)."""
  assets.check_present()
  return str(assets.VOCAB_PATH)
