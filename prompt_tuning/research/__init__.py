"""Research workflows on top of the entry points (used by `scripts/`).

  runs        a gin-configured entry-point call (train / eval / infer): its command
              line, and running it in this process or a subprocess
  model_dirs  reading what a training MODEL_DIR holds (records, metrics, trained
              arrays, the full trained model, prompts)
  evaluate    many prompt sources x many tasks through `prompt_tuning.eval`
  sweep       a grid of training runs from one small YAML/JSON file
  collect     one CSV row per run (best metric), aggregation over seeds
  plots       scaling curves and ablation plots (matplotlib, Agg)
  transfer    the zero-shot domain-transfer table (paper Tables 1 and 2)
  neighbors   nearest vocabulary tokens of prompt vectors (paper section 7)
  diff        which parameters differ between two checkpoints, and by how much

Library modules stay free of argument parsing; `scripts/*.py` are thin commands.
"""
