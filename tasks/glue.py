"""GLUE tasks (QQP, MRPC, SST-2) and the QQP <-> MRPC paraphrase transfer.

Names: `glue_{qqp,mrpc,sst2}_v200` read TFDS `glue/*:2.0.0` (the prompt-tuning
paper's version); `glue_*_v002` read `glue/*:1.0.0` (T5's names). Format (T5):

  "qqp question1: <q1> question2: <q2>"  -> not_duplicate | duplicate
  "mrpc sentence1: <s1> sentence2: <s2>" -> not_equivalent | equivalent
  "sst2 sentence: <s>"                   -> negative | positive

Paraphrase transfer (zero-shot: a prompt trained on one task evaluated on the
other). `glue_<target>_as_<source>_v*` is the target task's validation/test
data written with the *source* task's prefix and label words, its own field
names kept (as in the prompt-tuning paper's transfer experiment):

  glue_mrpc_as_qqp: "qqp sentence1: <s1> sentence2: <s2>" -> not_duplicate |
    duplicate  (MRPC's label 1, equivalent, is "duplicate")
  glue_qqp_as_mrpc: "mrpc question1: <q1> question2: <q2>" -> not_equivalent |
    equivalent

The taskless twins drop the prefix, so `taskless_glue_mrpc_as_qqp_v200`
inputs are exactly `taskless_glue_mrpc_v200` inputs. Scores use the source
task's metrics (F1 and accuracy), with class ids aligned (1 = paraphrase).
The mixtures `glue_<source>_to_<target>_v*` train on the source task and
evaluate on both the source validation set and the transfer task.
"""
import functools
from typing import Dict, Sequence

from tasks import metrics
from tasks import postprocessors
from tasks import preprocessors as prep
from tasks import registry
from tasks import sources

LABELS: Dict[str, Sequence[str]] = {
    "qqp": ("not_duplicate", "duplicate"),
    "mrpc": ("not_equivalent", "equivalent"),
    "sst2": ("negative", "positive"),
}
METRICS = {
    "qqp": (metrics.f1_with_invalid, metrics.accuracy,
            metrics.invalid_predictions),
    "mrpc": (metrics.f1_with_invalid, metrics.accuracy,
             metrics.invalid_predictions),
    "sst2": (metrics.accuracy, metrics.invalid_predictions),
}
# TFDS version -> task-name version suffix.
VERSIONS = {"2.0.0": "v200", "1.0.0": "v002"}
TRANSFERS = (("qqp", "mrpc"), ("mrpc", "qqp"))  # (source, target)


def _classification(name: str, data: str, format_as: str, tfds_version: str,
                    splits: Sequence[str]) -> None:
  """Registers GLUE `data` formatted as task `format_as`."""
  registry.add_task(
      name,
      source=sources.TransformedTfdsDataSource(
          f"glue/{data}:{tfds_version}", splits={s: s for s in splits}),
      text_preprocessors=[_glue_preprocessor(format_as)],
      metric_fns=METRICS[format_as],
      postprocess_fn=postprocessors.ClassLabel(LABELS[format_as]),
      label_strings=LABELS[format_as],
      prefix=format_as)


def _glue_preprocessor(benchmark: str):
  """T5's GLUE formatter with `benchmark`'s prefix and label words."""
  return functools.partial(prep.text_to_text_classification,
                           benchmark_name=benchmark,
                           label_names=LABELS[benchmark])


def register() -> None:
  """Registers the GLUE tasks and transfer mixtures."""
  for tfds_version, suffix in VERSIONS.items():
    for name in LABELS:
      _classification(f"glue_{name}_{suffix}", name, name, tfds_version,
                      ("train", "validation", "test"))
    for source, target in TRANSFERS:
      transfer = f"glue_{target}_as_{source}_{suffix}"
      _classification(transfer, target, source, tfds_version,
                      ("validation", "test"))
      registry.add_mixture(f"glue_{source}_to_{target}_{suffix}",
                           [f"glue_{source}_{suffix}", transfer],
                           default_rate=1.0)
