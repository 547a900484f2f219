r"""Interpret prompts: the k nearest vocabulary tokens of every prompt position.

As in section 7 of Lester et al. (2021): cosine similarity between each prompt
vector and every row of the frozen model's input embedding table.

  # Released prompts, with the T5 1.1 base embedding table saved as .npy:
  python scripts/nearest_tokens.py released_prompts/t5_1_1_lm100k_base/*.npy \
      --embeddings t5_base_embedding.npy --vocab /path/to/sentencepiece.model

  # A run on the bundled tiny model (table and vocabulary from the model):
  python scripts/nearest_tokens.py /runs/topic_prompt --tiny -k 5 \
      --output neighbors.json

Prompts: `.npy` `[P, H]` files, export directories, PEFT adapters or MODEL_DIRs
(their best export). The table: `--embeddings` (a `.npy` `[V, H]` or a checkpoint:
T5X / HF / native, `token_embedder/embedding`); for a MODEL_DIR it defaults to the
frozen model the run recorded. `--vocab` names ids (SentencePiece + --extra_ids
sentinels; rows past the vocabulary are padding and skipped); `--tiny` uses the
bundled tiny model's table and vocabulary. Prints `position  token (cosine) …`
per prompt; `--output` saves all of it as JSON (or TSV for a `.tsv` name).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from prompt_tuning import prompt_files
from prompt_tuning.run_dir import layout
from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import neighbors  # pylint: disable=g-import-not-at-top


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/nearest_tokens.py", __doc__)
  p.add_argument("prompts", nargs="+", help="prompt sources (.npy, MODEL_DIR, …)")
  p.add_argument("--embeddings", default=None,
                 help=".npy [V, H] table or a model checkpoint")
  p.add_argument("--vocab", default=None, help="SentencePiece model naming the ids")
  p.add_argument("--extra_ids", type=int, default=100)
  p.add_argument("--tiny", action="store_true",
                 help="the bundled tiny model's embedding table and vocabulary")
  p.add_argument("-k", type=int, default=5, help="neighbors per position")
  p.add_argument("--max_id", type=int, default=None,
                 help="only table rows below this id (default: the vocabulary size)")
  p.add_argument("--checkpoint", default="best", help="MODEL_DIR export to read")
  p.add_argument("--output", default=None, help=".json (default) or .tsv file")
  return p.parse_args(argv)


def _table_source(args, prompt_source: str) -> str:
  if args.embeddings:
    return args.embeddings
  if args.tiny:
    from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
    return str(assets.CHECKPOINT_PATH)
  if layout.is_model_dir(prompt_source):
    return prompt_source
  raise SystemExit("No embedding table: pass --embeddings (a .npy [V, H] table or a "
                   "checkpoint), --tiny, or a MODEL_DIR as the prompt source.")


def main(argv=None):
  args = parse_args(argv)
  vocab = args.vocab
  if args.tiny and not vocab:
    from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
    vocab = str(assets.VOCAB_PATH)
  pieces = neighbors.Pieces(vocab, args.extra_ids)
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  tables = {}
  report = []
  for source in args.prompts:
    prompt = prompt_files.load_prompt(source, checkpoint=checkpoint)
    table_source = _table_source(args, source)
    if table_source not in tables:
      tables[table_source] = neighbors.embedding_table(table_source)
    table = tables[table_source]
    rows = neighbors.neighbor_rows(prompt, table, pieces, args.k, args.max_id)
    print(neighbors.format_rows(rows, f"== {source}  [{prompt.shape[0]}, "
                                f"{prompt.shape[1]}] vs table {list(table.shape)} "
                                f"({table_source})"))
    report.append({"prompt": source, "shape": list(prompt.shape),
                   "table": table_source, "positions": rows})
  if args.output:
    write(report, args.output)
    print(f"Wrote {args.output}")
  return report


def write(report, path: str) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".tsv":
    lines = ["prompt\tposition\trank\tid\ttoken\tcosine"]
    for item in report:
      for row in item["positions"]:
        for rank, (i, t, c) in enumerate(zip(row["ids"], row["tokens"],
                                             row["cosine"]), 1):
          lines.append(f"{item['prompt']}\t{row['position']}\t{rank}\t{i}\t{t}\t{c}")
    path.write_text("\n".join(lines) + "\n")
  else:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
  errors.run_reporting("scripts/nearest_tokens.py", main, sys.argv[1:])
