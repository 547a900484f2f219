"""Generation tasks of the prefix-tuning paper (Li & Liang, 2021).

Formats (tables linearized in that paper's style, cell text kept as in the
data; the taskless twins drop the first word, leaving the linearized table):

  e2e_nlg  "e2e_nlg: name : The Eagle | eatType : coffee shop | food : French"
  web_nlg  "web_nlg: Aarhus_Airport : cityServed : \"Aarhus, Denmark\" | ..."
  dart     "dart: Mars Hill College : JOINED : 1973 | ..."
  xsum     "summarize: <article>" (T5's summarization format)

Sources: TFDS `e2e_cleaned:0.1.0` (the cleaned E2E release), `web_nlg:0.1.0`
(WebNLG challenge 2017), `dart:0.1.0`, `xsum:1.1.0`. WebNLG's splits:
`test` (= all test data), `test_seen` (the 10 DBpedia categories seen in
training), `test_unseen` (the 5 new ones) for the extrapolation experiment.

Table-to-text data repeats an input once per reference; the metrics group
examples by input and score each input once against all its references.
Low-data variants `<name>_n{50,100,200,500}` train on a fixed subset of the
training set (drawn with `LOW_DATA_SEED`) and evaluate on the full splits.
"""
import functools

import tensorflow as tf

from tasks import postprocessors
from tasks import preprocessors as prep
from tasks import registry
from tasks import sources
from tasks import text_metrics

LOW_DATA_SIZES = (50, 100, 200, 500)
LOW_DATA_SEED = 0

# WebNLG 2017 DBpedia categories: the 10 of the training data, the 5 new in
# the test data (TFDS's test_unseen).
WEB_NLG_SEEN_CATEGORIES = (
    "Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food",
    "Monument", "SportsTeam", "University", "WrittenWork")
WEB_NLG_UNSEEN_CATEGORIES = (
    "Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician")


def _seen_category(x) -> tf.Tensor:
  category = x["input_text"]["context"]
  return tf.reduce_any(tf.equal(category, WEB_NLG_SEEN_CATEGORIES))


# Per dataset: TFDS name, seqio split -> TFDS split, split transforms, text
# preprocessor, task prefix, metric functions and postprocessor.
_TABLE_METRICS = (text_metrics.bleu, text_metrics.rouge)
DATASETS = {
    "e2e_nlg": dict(
        tfds_name="e2e_cleaned:0.1.0",
        splits={"train": "train", "validation": "validation", "test": "test"},
        transforms={},
        preprocessor=functools.partial(prep.table_to_text, prefix="e2e_nlg:",
                                       triples=False),
        prefix="e2e_nlg:", metric_fns=_TABLE_METRICS,
        postprocess_fn=postprocessors.GroupedText()),
    "web_nlg": dict(
        tfds_name="web_nlg:0.1.0",
        splits={"train": "train", "validation": "validation",
                "test": "test_all", "test_seen": "test_all",
                "test_unseen": "test_unseen"},
        transforms={"test_seen": sources.filter_by(_seen_category)},
        preprocessor=functools.partial(prep.table_to_text, prefix="web_nlg:",
                                       triples=True),
        prefix="web_nlg:", metric_fns=_TABLE_METRICS,
        postprocess_fn=postprocessors.GroupedText()),
    "dart": dict(
        tfds_name="dart:0.1.0",
        splits={"train": "train", "validation": "validation", "test": "test"},
        transforms={},
        preprocessor=functools.partial(prep.table_to_text, prefix="dart:",
                                       triples=True),
        prefix="dart:", metric_fns=_TABLE_METRICS,
        postprocess_fn=postprocessors.GroupedText()),
    "xsum": dict(
        tfds_name="xsum:1.1.0",
        splits={"train": "train", "validation": "validation", "test": "test"},
        transforms={},
        preprocessor=functools.partial(prep.summarize, article_key="document",
                                       summary_key="summary"),
        prefix="summarize:", metric_fns=(text_metrics.rouge,),
        postprocess_fn=None),
}


def _register(name: str, spec: dict, train_size=None) -> None:
  transforms = dict(spec["transforms"])
  sizes = {}
  if train_size is not None:
    transforms["train"] = sources.fixed_subset(train_size, LOW_DATA_SEED)
    sizes["train"] = train_size
  registry.add_task(
      name,
      source=sources.TransformedTfdsDataSource(
          spec["tfds_name"], splits=spec["splits"], transforms=transforms,
          sizes=sizes),
      text_preprocessors=[spec["preprocessor"]],
      metric_fns=spec["metric_fns"],
      postprocess_fn=spec["postprocess_fn"],
      prefix=spec["prefix"])


def register() -> None:
  """Registers the full and low-data generation tasks."""
  for name, spec in DATASETS.items():
    _register(name, spec)
    for size in LOW_DATA_SIZES:
      _register(f"{name}_n{size}", spec, train_size=size)
