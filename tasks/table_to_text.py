"""Table-to-text in the prefix-tuning paper's GPT-2 format (Li & Liang, 2021).

The same TFDS data as `tasks/generation.py` (`e2e_cleaned`, `web_nlg`, `dart`; same
splits, WebNLG's `test_seen` / `test_unseen`), formatted as the paper's code feeds
GPT-2: the linearised table is the input, the sentence the target, and with the
decoder-only converter (prompt_tuning/data_decoder.py) the sequence is
"<table> <EOS> <sentence> <EOS>", the loss on the sentence only.

  lm_e2e_nlg  "name : The Eagle | Type : coffee shop | price : cheap | family friendly : no"
              (E2E attributes renamed as in the paper's files: eatType -> Type,
              priceRange -> price, familyFriendly -> family friendly)
  lm_web_nlg  "| Aarhus_Airport : cityServed : \"Aarhus, Denmark\" | Aarhus_Airport : ..."
              (every triple preceded by "| ", the leading one included, as in
              the paper's WebNLG reader)
  lm_dart     "Mars Hill College : joined : 1973 | Mars Hill College : location : ..."
              (predicates lower-cased, as in the paper's DART reader)

No task word and no taskless twin. Metrics: BLEU (sacrebleu, 13a tokenisation, all
references of an input), TER (sacrebleu, all references) and ROUGE; see
docs/TASKS.md ("Decoder-only tasks") for how these relate to the paper's scripts.
"""
from typing import Dict

import seqio
import sacrebleu
import tensorflow as tf

from tasks import generation
from tasks import metrics
from tasks import postprocessors
from tasks import registry
from tasks import sources
from tasks import text_metrics

_plain = tf.autograph.experimental.do_not_convert
E2E_NAMES = (("eatType", "Type"), ("priceRange", "price"),
             ("familyFriendly", "family friendly"))


def _columns(table):
  n = tf.reduce_min(tf.stack([tf.size(table["column_header"]),
                              tf.size(table["row_number"]), tf.size(table["content"])]))
  return table["column_header"][:n], table["row_number"][:n], table["content"][:n]


def linearize_e2e(table) -> tf.Tensor:
  """"attribute : value | ..." with the paper's attribute names (scalar string)."""
  headers, _, contents = _columns(table)
  for old, new in E2E_NAMES:
    headers = tf.strings.regex_replace(headers, f"^{old}$", new)
  cells = tf.strings.join([headers, contents], separator=" : ")
  return tf.strings.reduce_join(cells, separator=" | ")


def _triples(table, lowercase_predicate: bool) -> tf.Tensor:
  """[num_triples] strings "s : p : o" (cells grouped by consecutive row number)."""
  headers, rows, contents = _columns(table)
  if lowercase_predicate:
    contents = tf.where(tf.equal(headers, "predicate"), tf.strings.lower(contents),
                        contents)
  changed = tf.cast(tf.not_equal(rows[1:], rows[:-1]), tf.int64)
  row_ids = tf.concat([tf.zeros([tf.minimum(tf.size(rows), 1)], tf.int64),
                       tf.cumsum(changed)], axis=0)
  grouped = tf.RaggedTensor.from_value_rowids(contents, row_ids, validate=False)
  return tf.strings.reduce_join(grouped, axis=1, separator=" : ")


def linearize_web_nlg(table) -> tf.Tensor:
  """"| s : p : o | s : p : o" (scalar string)."""
  return tf.strings.reduce_join(tf.strings.join(["| ", _triples(table, False)]),
                                separator=" ")


def linearize_dart(table) -> tf.Tensor:
  """"s : p : o | s : p : o" with lower-cased predicates (scalar string)."""
  return tf.strings.reduce_join(_triples(table, True), separator=" | ")


def _formatter(linearize):
  @seqio.map_over_dataset
  @_plain
  def fn(x):
    ex = {"inputs": linearize(x["input_text"]["table"]), "targets": x["target_text"]}
    if "context" in x["input_text"]:
      ex["category"] = x["input_text"]["context"]
    return ex
  fn.__name__ = linearize.__name__
  return fn


@metrics.returns("ter")
def ter(targets, predictions) -> Dict[str, float]:
  """Corpus TER (sacrebleu, lower is better) with all references of each input.

  Per input: the fewest edits over its references; corpus TER = total edits /
  total average reference length, so inputs with fewer references are not padded.
  """
  references, predictions = text_metrics.group_references(targets, predictions)
  if not predictions:
    return {"ter": 0.0}
  metric = sacrebleu.metrics.TER()
  edits = length = 0.0
  for refs, prediction in zip(references, predictions):
    score = metric.corpus_score([prediction], [[r] for r in refs])
    edits += score.num_edits
    length += score.ref_length
  return {"ter": 100.0 * edits / length if length else 0.0}


TASKS = {
    "lm_e2e_nlg": ("e2e_nlg", linearize_e2e),
    "lm_web_nlg": ("web_nlg", linearize_web_nlg),
    "lm_dart": ("dart", linearize_dart),
}


def register() -> None:
  for name, (dataset, linearize) in TASKS.items():
    spec = generation.DATASETS[dataset]
    registry.add_task(
        name,
        source=sources.TransformedTfdsDataSource(
            spec["tfds_name"], splits=spec["splits"], transforms=spec["transforms"]),
        text_preprocessors=[_formatter(linearize)],
        metric_fns=[text_metrics.bleu, ter, text_metrics.rouge],
        postprocess_fn=postprocessors.GroupedText(),
        taskless=False)
