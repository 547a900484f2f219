r"""Export a LoRA or IA3 training run as a PEFT adapter, or merged into a plain T5.

  python scripts/export_adapter.py /runs/rte_lora /exports/rte_lora_peft
  python scripts/export_adapter.py /runs/rte_lora /exports/rte_t5 --merged
  python scripts/export_adapter.py /runs/rte_ia3 /exports/ia3 --checkpoint 3000

Reads the run's `config.json` (method, the adapter's rank / alpha / targets, the
frozen checkpoint and model config) and its `.npy` export (`best/` by default,
`--checkpoint latest` or a step). Default output: a Hugging Face PEFT adapter
directory (`adapter_config.json` + `adapter_model.safetensors`) for
`peft.PeftModel.from_pretrained` on the converted T5, or for
`prompt_tuning.infer --gin.ADAPTER=...`. With `--merged`: the frozen checkpoint with
the adapter folded into its kernels, written as a Hugging Face T5 directory (the
same logits as the adapted model; loadable by `checkpoints.load`).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # pylint: disable=g-import-not-at-top

from prompt_tuning import checkpoints, cli  # pylint: disable=g-import-not-at-top
from prompt_tuning.run_dir import layout  # pylint: disable=g-import-not-at-top
from prompt_tuning.checkpoints import huggingface, peft_adapters  # pylint: disable=g-import-not-at-top
from prompt_tuning.methods import ia3, lora  # pylint: disable=g-import-not-at-top
from prompt_tuning.params import with_params  # pylint: disable=g-import-not-at-top
from prompt_tuning.models.config import T5Config  # pylint: disable=g-import-not-at-top


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/export_adapter.py", __doc__)
  p.add_argument("model_dir", help="a LoRA or IA3 training MODEL_DIR")
  p.add_argument("output", help="the directory to write")
  p.add_argument("--checkpoint", default="best", help="best, latest or a step")
  p.add_argument("--merged", action="store_true",
                 help="write the frozen T5 with the adapter merged (Hugging Face format)")
  return p.parse_args(argv)


def export(model_dir: str, output: str, checkpoint="best", merged: bool = False) -> str:
  record = layout.read_record(model_dir)
  method, settings = record.get("method"), record.get("adapter")
  if method not in ("lora", "ia3") or not settings:
    raise ValueError(f"{model_dir} was trained with method {method!r} (adapter "
                     f"settings {settings!r}); this script exports LoRA and IA3 runs "
                     "(written by a version that records the adapter settings).")
  config = T5Config.from_dict(record["model_config"])
  arrays = layout.read_arrays(layout.export_dir(model_dir, checkpoint))
  flat = {name.replace(".", "/"): value for name, value in arrays.items()}
  if method == "lora":
    scale = float(settings["alpha"]) / int(settings["rank"])
  else:
    hook = ia3.Ia3Hook(tuple(settings["output_targets"]), tuple(settings["input_targets"]))
  if merged:
    frozen_path = record.get("initial_checkpoint_path")
    if not frozen_path:
      raise ValueError(f"{model_dir} was trained on a randomly initialized model; "
                       "there is no frozen checkpoint to merge into.")
    _, params = checkpoints.load(frozen_path, config=config)
    params = with_params(params, flat)
    params = (lora.merge(params, scale) if method == "lora"
              else ia3.merge(params, hook.input_targets))
    huggingface.save_huggingface(output, _numpy(params), config)
    return output
  if method == "lora":
    return peft_adapters.save_lora(output, flat, config, alpha=float(settings["alpha"]),
                                   dropout_rate=float(settings.get("dropout_rate", 0.0)))
  inputs = sorted({p.rsplit("/", 1)[0] for p in flat
                   if hook.is_input_target(p.rsplit("/", 1)[0])})
  return peft_adapters.save_ia3(output, flat, config, input_modules=inputs)


def _numpy(tree):
  if hasattr(tree, "items"):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def main(argv=None) -> int:
  args = parse_args(argv)
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  try:
    written = export(args.model_dir, args.output, checkpoint, args.merged)
  except (FileNotFoundError, ValueError) as e:
    print(f"export_adapter: {e}", file=sys.stderr)
    return 1
  print(f"wrote {written}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
