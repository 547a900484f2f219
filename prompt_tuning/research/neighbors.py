"""Nearest vocabulary tokens of prompt vectors (Lester et al. 2021, section 7).

For each prompt position p, the k rows of the frozen model's input embedding table
closest to `prompt[p]` by cosine similarity:

  ids, sims = nearest(prompt [P, H], table [V, H], k)   # [P, k] each, best first

`embedding_table(source)` reads the table from a `.npy` `[V, H]` file or from a model
checkpoint (`token_embedder/embedding`); `Pieces` names ids with a SentencePiece
model (extra ids as `<extra_id_N>`, T5's convention of counting down from the top).
"""
from __future__ import annotations

import pathlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.run_dir import layout, train_state

EMBEDDING_PATH = "token_embedder/embedding"


def nearest(prompt: np.ndarray, table: np.ndarray, k: int = 5
            ) -> Tuple[np.ndarray, np.ndarray]:
  """Cosine nearest neighbors of each prompt row among the table rows.

  Args:
    prompt: [P, H] prompt vectors.
    table: [V, H] embedding rows (e.g. the vocabulary part of the input table).
    k: neighbors per position (at most V).

  Returns:
    (ids [P, k] int64, cosine similarities [P, k] float32), best first; ties go to
    the lower id.
  """
  prompt = np.asarray(prompt, np.float64)
  table = np.asarray(table, np.float64)
  if prompt.ndim != 2 or table.ndim != 2 or prompt.shape[1] != table.shape[1]:
    raise ValueError(f"Expected prompt [P, H] and table [V, H] of the same width H; "
                     f"got {list(prompt.shape)} and {list(table.shape)}.")
  k = min(int(k), table.shape[0])
  eps = 1e-12
  p = prompt / np.maximum(np.linalg.norm(prompt, axis=1, keepdims=True), eps)
  t = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), eps)
  sims = p @ t.T  # [P, V]
  order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  return order.astype(np.int64), np.take_along_axis(sims, order, 1).astype(np.float32)


def embedding_table(source: str) -> np.ndarray:
  """The `[V, H]` input embedding table of a `.npy` file or a model checkpoint
  (T5X, Hugging Face or native; for a training MODEL_DIR, the frozen model it
  started from, or its own table when the embeddings were trained)."""
  path = pathlib.Path(source)
  if path.suffix == ".npy":
    table = np.load(path)
  else:
    from prompt_tuning.research import model_dirs  # pylint: disable=g-import-not-at-top
    if layout.is_model_dir(path):
      rec = layout.read_record(path)
      if rec.get("method") == "model":
        table = train_state.read_trainable(path)[EMBEDDING_PATH]
      else:
        _, flat = model_dirs.frozen_params(rec.get("initial_checkpoint_path"),
                                           str(path))
        table = flat[EMBEDDING_PATH]
    else:
      from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
      from prompt_tuning.params import get_param  # pylint: disable=g-import-not-at-top
      _, params = checkpoints.load(model_dirs.local_absolute(path),
                                   weights_only=True)
      table = get_param(params, EMBEDDING_PATH)
  table = np.asarray(table, np.float32)
  if table.ndim != 2:
    raise ValueError(f"{source}: an embedding table is [V, H]; found "
                     f"{list(table.shape)}.")
  return table


class Pieces:
  """Id → token text with a SentencePiece model plus `extra_ids` sentinels."""

  def __init__(self, vocab_path: Optional[str] = None, extra_ids: int = 100):
    self.processor = None
    self.base_size = 0
    self.extra_ids = extra_ids
    if vocab_path:
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
      self.processor = spm.SentencePieceProcessor(model_file=str(vocab_path))
      self.base_size = self.processor.get_piece_size()

  @property
  def size(self) -> Optional[int]:
    """Ids with a meaning (pieces + extra ids); None without a vocabulary."""
    return self.base_size + self.extra_ids if self.processor else None

  def __call__(self, token_id: int) -> str:
    token_id = int(token_id)
    if self.processor is None:
      return f"<id {token_id}>"
    if token_id < self.base_size:
      return self.processor.id_to_piece(token_id)
    if token_id < self.base_size + self.extra_ids:
      return f"<extra_id_{self.base_size + self.extra_ids - 1 - token_id}>"
    return f"<padding row {token_id}>"


def neighbor_rows(prompt: np.ndarray, table: np.ndarray, pieces: Pieces, k: int = 5,
                  max_id: Optional[int] = None) -> List[Dict[str, Any]]:
  """One record per prompt position: `{position, ids, tokens, cosine}`.

  `max_id` (default: the vocabulary's size) drops the table's padding rows.
  """
  limit = max_id if max_id is not None else (pieces.size or table.shape[0])
  ids, sims = nearest(prompt, table[:limit], k)
  return [{"position": p, "ids": ids[p].tolist(),
           "tokens": [pieces(i) for i in ids[p]],
           "cosine": [round(float(s), 4) for s in sims[p]]}
          for p in range(ids.shape[0])]


def format_rows(rows: Sequence[Dict[str, Any]], title: str = "") -> str:
  """`pos  token (cos)  token (cos) …` lines."""
  lines = [title] if title else []
  for row in rows:
    cells = [f"{t} ({c:.2f})" for t, c in zip(row["tokens"], row["cosine"])]
    lines.append(f"{row['position']:4d}  " + "  ".join(cells))
  return "\n".join(lines)
