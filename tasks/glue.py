"""GLUE (all of it, as T5 registers it) and the QQP <-> MRPC paraphrase transfer.

Names: `glue_<name>_v002` read TFDS `glue/<name>:1.0.0` (T5's names);
`glue_<name>_v200` read `glue/<name>:2.0.0` (the prompt-tuning paper's
version). Formats, postprocessors and metrics are T5's (`t5.data.glue_utils`):

  cola  "cola sentence: <s>"                    -> unacceptable | acceptable
  sst2  "sst2 sentence: <s>"                    -> negative | positive
  mrpc  "mrpc sentence1: <s1> sentence2: <s2>"  -> not_equivalent | equivalent
  qqp   "qqp question1: <q1> question2: <q2>"   -> not_duplicate | duplicate
  stsb  "stsb sentence1: <s1> sentence2: <s2>"  -> "3.4" (label rounded to 0.2)
  mnli  "mnli hypothesis: <h> premise: <p>"     -> entailment | neutral |
        contradiction (also mnli_matched, mnli_mismatched and the AX
        diagnostic, all cast as MNLI)
  qnli  "qnli question: <q> sentence: <s>"      -> entailment | not_entailment
  rte   "rte sentence1: <s1> sentence2: <s2>"   -> entailment | not_entailment
  wnli  "wnli sentence1: <s1> sentence2: <s2>"  -> not_entailment | entailment

Fields are the TFDS features in sorted order. Metrics: CoLA Matthews
correlation; STS-B Pearson and Spearman correlation of the predicted numbers
(a prediction that is not a number counts as -1, T5's `string_to_float`);
MRPC and QQP F1 and accuracy; the rest accuracy. T5 gives AX no metric (its
labels are hidden); here it gets Matthews correlation and accuracy, like AX-b.

Paraphrase transfer (zero-shot: a prompt trained on one task evaluated on the
other): `glue_<target>_as_<source>_v*` is the target task's validation/test
data written with the *source* task's prefix and label words, its own field
names kept; scores use the source task's metrics, class ids aligned
(1 = paraphrase). The mixtures `glue_<source>_to_<target>_v*` train on the
source task and evaluate on both the source validation set and the transfer
task. (The prompt-tuning code's own transfer names, `glue_<target>_from_
<source>_v002`, are in transfer.py.)
"""
import functools
from typing import Dict, Sequence

from tasks import metrics
from tasks import postprocessors
from tasks import preprocessors as prep
from tasks import registry
from tasks import sources

# TFDS GLUE label classes, by config (a test checks them against TFDS).
LABELS: Dict[str, Sequence[str]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "mnli_mismatched": ("entailment", "neutral", "contradiction"),
    "mnli_matched": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "ax": ("entailment", "neutral", "contradiction"),
}
CONFIGS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_mismatched",
           "mnli_matched", "qnli", "rte", "wnli", "ax")
_BINARY_PARAPHRASE = (metrics.f1_with_invalid, metrics.accuracy)
METRICS = {
    "cola": (metrics.matthews_corrcoef,),
    "sst2": (metrics.accuracy,),
    "mrpc": _BINARY_PARAPHRASE,
    "qqp": _BINARY_PARAPHRASE,
    "stsb": (metrics.pearson_corrcoef, metrics.spearman_corrcoef),
    "mnli": (metrics.accuracy,),
    "mnli_mismatched": (metrics.accuracy,),
    "mnli_matched": (metrics.accuracy,),
    "qnli": (metrics.accuracy,),
    "rte": (metrics.accuracy,),
    "wnli": (metrics.accuracy,),
    "ax": (metrics.matthews_corrcoef, metrics.accuracy),
}
_ALL = ("train", "validation", "test")
SPLITS = {
    "mnli": ("train", "validation_matched", "validation_mismatched",
             "test_matched", "test_mismatched"),
    "mnli_matched": ("validation", "test"),
    "mnli_mismatched": ("validation", "test"),
    "ax": ("test",),
}
# T5's `glue_v002_proportional` rates: training-set sizes; WNLI is left out
# (T5 trains on WSC/DPR instead); eval-only tasks get 0.
PROPORTIONAL_RATES = {
    "cola": 8_551., "sst2": 67_349., "mrpc": 3_668., "qqp": 363_849.,
    "stsb": 5_749., "mnli": 392_702., "qnli": 104_743., "rte": 2_490.,
    "mnli_mismatched": 0., "mnli_matched": 0., "ax": 0.,
}
# TFDS version -> task-name version suffix.
VERSIONS = {"2.0.0": "v200", "1.0.0": "v002"}
TRANSFERS = (("qqp", "mrpc"), ("mrpc", "qqp"))  # (source, target)


def benchmark_name(config: str) -> str:
  """The leading word of a GLUE config's inputs (MNLI's for its dev sets/AX)."""
  return "mnli" if ("mnli" in config or config == "ax") else config


def text_preprocessor(config: str, format_as: str = None):
  """T5's GLUE formatter for `config`, with `format_as`'s prefix and labels."""
  if config == "stsb":
    return prep.stsb
  format_as = format_as or config
  return functools.partial(prep.text_to_text_classification,
                           benchmark_name=benchmark_name(format_as),
                           label_names=LABELS[format_as])


def postprocess_fn(config: str):
  """T5's GLUE postprocessor: class id of a label string, STS-B a float."""
  if config == "stsb":
    return postprocessors.string_to_float
  return postprocessors.ClassLabel(LABELS[config])


def metric_fns(config: str):
  """The metric functions of a GLUE config (+ invalid_predictions)."""
  extra = () if config == "stsb" else (metrics.invalid_predictions,)
  return METRICS[config] + extra


def _register(name: str, data: str, format_as: str, tfds_version: str,
              splits: Sequence[str]) -> None:
  """Registers GLUE `data` formatted as task `format_as`."""
  registry.add_task(
      name,
      source=sources.TransformedTfdsDataSource(
          f"glue/{data}:{tfds_version}", splits={s: s for s in splits}),
      text_preprocessors=[text_preprocessor(data, format_as)],
      metric_fns=metric_fns(format_as),
      postprocess_fn=postprocess_fn(format_as),
      label_strings=LABELS.get(format_as),
      prefix=benchmark_name(format_as))


def register() -> None:
  """Registers every GLUE task, the transfer tasks and the mixtures."""
  for tfds_version, suffix in VERSIONS.items():
    for name in CONFIGS:
      _register(f"glue_{name}_{suffix}", name, name, tfds_version,
                SPLITS.get(name, _ALL))
    registry.add_mixture(
        f"glue_{suffix}_proportional",
        [(f"glue_{name}_{suffix}", rate)
         for name, rate in PROPORTIONAL_RATES.items()])
    registry.add_mixture(
        f"glue_mnli_and_dev_{suffix}",
        [f"glue_{name}_{suffix}"
         for name in ("mnli", "mnli_mismatched", "mnli_matched")],
        default_rate=1.0)
    for source, target in TRANSFERS:
      transfer = f"glue_{target}_as_{source}_{suffix}"
      _register(transfer, target, source, tfds_version,
                ("validation", "test"))
      registry.add_mixture(f"glue_{source}_to_{target}_{suffix}",
                           [f"glue_{source}_{suffix}", transfer],
                           default_rate=1.0)
