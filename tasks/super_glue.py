"""SuperGLUE v1.0.2 tasks and T5's proportional mixture.

Formats (T5's; the taskless twins drop the first word):

  boolq   "boolq passage: <p> question: <q>"                  -> False | True
  cb      "cb hypothesis: <h> premise: <p>"  -> entailment | contradiction |
          neutral
  copa    "copa choice1: <c1> choice2: <c2> premise: <p> question: cause"
          -> choice1 | choice2
  multirc "multirc question: <q> answer: <a> paragraph: <p>" (HTML <br>, <b>
          removed)                                            -> False | True
  record  "record query: <q with @placeholder> entities: e1, e2 passage: <p>"
          -> an entity (one example per answer)
  rte     "rte hypothesis: <h> premise: <p>"  -> entailment | not_entailment
  wic     "wic sentence1: <s1> sentence2: <s2> word: <w>"     -> False | True
  axb/axg diagnostics cast as RTE: "rte hypothesis: <h> premise: <p>" (test
          split only)
  wsc     "wsc: The city councilmen refused the demonstrators a permit because
          *they* feared violence." -> the referent ("The city councilmen")

WSC follows T5's "simple" recipe: `super_glue_wsc_v102_simple_train` trains
on correct referents only; `super_glue_wsc_v102_simple_eval` scores any
referent; `super_glue_wsc_and_dev_v102_simple` (alias `super_glue_wsc_v102`)
combines them.
"""
import functools

import seqio

from tasks import metrics
from tasks import postprocessors
from tasks import preprocessors as prep
from tasks import registry
from tasks import sources

TFDS_VERSION = "1.0.2"
BOOL = ("False", "True")
NLI = ("entailment", "not_entailment")

# name -> (label strings, feature order or None for sorted, metrics)
CLASSIFICATION = {
    "boolq": (BOOL, None, (metrics.accuracy,)),
    "cb": (("entailment", "contradiction", "neutral"), None,
           (metrics.mean_multiclass_f1(3), metrics.accuracy)),
    "copa": (("choice1", "choice2"), None, (metrics.accuracy,)),
    "rte": (NLI, None, (metrics.accuracy,)),
    "wic": (BOOL, ("sentence1", "sentence2", "word"), (metrics.accuracy,)),
}

# T5's `super_glue_v102_proportional` rates: the training-set sizes (none is
# above T5's examples-proportional cap of 2**19, so no capping applies);
# eval-only tasks get 0.
PROPORTIONAL_RATES = {
    "dpr_v001_simple": 1_322.,
    "super_glue_wsc_v102_simple_train": 259.,
    "super_glue_wsc_v102_simple_eval": 0.,
    "super_glue_boolq_v102": 9_427.,
    "super_glue_cb_v102": 250.,
    "super_glue_copa_v102": 400.,
    "super_glue_multirc_v102": 27_243.,
    "super_glue_record_v102": 138_854.,
    "super_glue_rte_v102": 2_490.,
    "super_glue_wic_v102": 5_428.,
    "super_glue_axb_v102": 0.,
    "super_glue_axg_v102": 0.,
}
ALL_SPLITS = ("train", "validation", "test")


def _source(config: str, splits=ALL_SPLITS) -> seqio.DataSource:
  return sources.TransformedTfdsDataSource(
      f"super_glue/{config}:{TFDS_VERSION}", splits={s: s for s in splits})


def _formatter(benchmark, label_names, feature_names=None):
  return functools.partial(prep.text_to_text_classification,
                           benchmark_name=benchmark, label_names=label_names,
                           feature_names=feature_names)


def _register_classification() -> None:
  for name, (label_names, features, metric_fns) in CLASSIFICATION.items():
    registry.add_task(
        f"super_glue_{name}_v102",
        source=_source(name),
        text_preprocessors=[_formatter(name, label_names, features)],
        metric_fns=metric_fns + (metrics.invalid_predictions,),
        postprocess_fn=postprocessors.ClassLabel(label_names),
        label_strings=label_names,
        prefix=name)

  registry.add_task(
      "super_glue_multirc_v102",
      source=_source("multirc"),
      text_preprocessors=[
          _formatter("multirc", BOOL, ("question", "answer", "paragraph"))
      ],
      metric_fns=(metrics.multirc_f1_over_all_answers,
                  metrics.multirc_exact_match, metrics.invalid_predictions),
      postprocess_fn=postprocessors.multirc,
      label_strings=BOOL,
      prefix="multirc")

  registry.add_task(
      "super_glue_record_v102",
      source=_source("record"),
      text_preprocessors=[prep.record],
      metric_fns=(metrics.record,),
      postprocess_fn=postprocessors.record,
      prefix="record")


def _register_diagnostics() -> None:
  """AX-b and AX-g: test-only diagnostics scored as RTE predictions."""
  registry.add_task(
      "super_glue_axb_v102",
      source=_source("axb", splits=("test",)),
      text_preprocessors=[
          functools.partial(seqio.preprocessors.rekey, key_map={
              "premise": "sentence1", "hypothesis": "sentence2",
              "label": "label", "idx": "idx"}),
          _formatter("rte", NLI),
      ],
      metric_fns=(metrics.matthews_corrcoef, metrics.accuracy,
                  metrics.invalid_predictions),
      postprocess_fn=postprocessors.ClassLabel(NLI),
      label_strings=NLI,
      prefix="rte")
  registry.add_task(
      "super_glue_axg_v102",
      source=_source("axg", splits=("test",)),
      text_preprocessors=[_formatter("rte", NLI)],
      metric_fns=(metrics.gender_parity, metrics.accuracy,
                  metrics.invalid_predictions),
      postprocess_fn=postprocessors.GroupedClassLabel(NLI),
      label_strings=NLI,
      prefix="rte")


def _register_wsc() -> None:
  """T5's simple WSC (and DPR, which T5's SuperGLUE mixture trains on)."""
  registry.add_task(
      "super_glue_wsc_v102_simple_train",
      source=_source("wsc.fixed", splits=("train",)),
      text_preprocessors=[
          functools.partial(prep.wsc_simple, correct_referent_only=True)
      ],
      prefix="wsc:")
  registry.add_task(
      "super_glue_wsc_v102_simple_eval",
      source=_source("wsc.fixed", splits=("validation", "test")),
      text_preprocessors=[
          functools.partial(prep.wsc_simple, correct_referent_only=False)
      ],
      metric_fns=(metrics.accuracy,),
      postprocess_fn=postprocessors.wsc_simple,
      prefix="wsc:")
  members = ["super_glue_wsc_v102_simple_train",
             "super_glue_wsc_v102_simple_eval"]
  registry.add_mixture("super_glue_wsc_and_dev_v102_simple", members,
                       default_rate=1.0)
  registry.add_mixture("super_glue_wsc_v102", members, default_rate=1.0)

  registry.add_task(
      "dpr_v001_simple",
      source=sources.TransformedTfdsDataSource(
          "definite_pronoun_resolution:1.1.0",
          splits={"train": "train", "test": "test"}),
      text_preprocessors=[prep.definite_pronoun_resolution_simple],
      metric_fns=(metrics.accuracy,),
      prefix="wsc:")


def _register_sentinel_twins() -> None:
  """T5's `_1_sentinel` twins and their proportional mixture."""
  sentinel_rates = []
  for name, rate in PROPORTIONAL_RATES.items():
    sentinel_rates.append((registry.add_sentinel_twin(name), rate))
  registry.add_mixture("super_glue_v102_proportional_sentinel",
                       sentinel_rates, taskless=False)


def register() -> None:
  """Registers the SuperGLUE tasks, T5's sentinel twins and mixtures."""
  _register_classification()
  _register_diagnostics()
  _register_wsc()
  registry.add_mixture("super_glue_v102_proportional",
                       list(PROPORTIONAL_RATES.items()))
  registry.add_mixture("wsc_dpr_simple_proportional", [
      (name, PROPORTIONAL_RATES[name]) for name in (
          "dpr_v001_simple", "super_glue_wsc_v102_simple_train",
          "super_glue_wsc_v102_simple_eval")])
  _register_sentinel_twins()
