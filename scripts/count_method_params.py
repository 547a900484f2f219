r"""Count each method's trained parameters on T5 1.1 sizes (shapes only, no weights).

  python scripts/count_method_params.py                      # small, base, xxl
  python scripts/count_method_params.py --presets tiny base --markdown

Every method is built with the defaults of its gin file in configs/methods/ (prompt
and prefix length 10, LoRA r = 8 on attention query/value, IA3 on keys, values and
the MLP activation, ...), and its parameter tree is traced with `jax.eval_shape`, so
even xxl takes seconds. Prints, per preset, the trained parameter count and its share
of the frozen model; for prefix tuning also the folded (inference) count.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning.methods import (baselines, deep_prompt, ia3, lopa, lora,  # pylint: disable=g-import-not-at-top
                                   prefix, prompt)
from prompt_tuning.methods.base import Method  # pylint: disable=g-import-not-at-top
from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
from prompt_tuning.models.config import preset  # pylint: disable=g-import-not-at-top

METHODS = {
    "prompt tuning (P=10)": lambda: prompt.prompt_tuning(length=10),
    "prefix tuning (P=10, MLP k=512)": lambda: prefix.prefix_tuning(length=10),
    "prefix tuning + cross-attention": lambda: prefix.prefix_tuning(
        length=10, cross_attention=True),
    "P-tuning v2 (P=10)": lambda: prefix.p_tuning_v2(length=10),
    "per-layer prompts (P=10)": lambda: deep_prompt.per_layer_prompt(length=10),
    "LoPA (P=10, r=4)": lambda: lopa.lopa(length=10, rank=4),
    "LoRA (r=8, q,v)": lambda: lora.lora(rank=8),
    "IA3": ia3.ia3,
    "BitFit-style (norm scales)": baselines.partial_tuning,
    "model tuning": baselines.model_tuning,
}


def counts(method: Method, preset_name: str) -> Dict[str, int]:
  """{'trained': n, 'frozen': n, 'inference': n} parameter counts."""
  config = preset(preset_name)
  tokens = jnp.ones((1, 2), jnp.int32)

  def sizes(m: Method):
    shapes = jax.eval_shape(lambda: m.build(config).init(jax.random.PRNGKey(0), tokens,
                                                         tokens)["params"])
    return {p: int(np.prod(leaf.value.shape if hasattr(leaf, "value") else leaf.shape))
            for p, leaf in flatten(shapes).items()}

  plain = sizes(Method(name="plain"))
  ours = sizes(method)
  trained = sum(n for p, n in ours.items() if method.is_trainable(p))
  inference = method.inference_method()
  if inference is method:
    after = trained
  else:
    after = sum(n for p, n in sizes(inference).items() if p not in plain)
  return {"trained": trained, "frozen": sum(plain.values()), "inference": after}


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/count_method_params.py", __doc__)
  p.add_argument("--presets", nargs="+", default=["small", "base", "xxl"])
  p.add_argument("--markdown", action="store_true", help="print a markdown table")
  return p.parse_args(argv)


def main(argv: Sequence[str] = None) -> int:
  args = parse_args(argv)
  table = {name: {p: counts(make(), p) for p in args.presets}
           for name, make in METHODS.items()}
  header = ["method"] + [f"{p}: trained (% of frozen)" for p in args.presets]
  rows = []
  for name, per_preset in table.items():
    cells = [name]
    for p in args.presets:
      c = per_preset[p]
      cell = f"{c['trained']:,} ({100 * c['trained'] / c['frozen']:.3g}%)"
      if c["inference"] != c["trained"]:
        cell += f"; {c['inference']:,} folded"
      cells.append(cell)
    rows.append(cells)
  if args.markdown:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
      print("| " + " | ".join(cells) + " |")
  else:
    for cells in rows:
      print("  ".join(cells))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
