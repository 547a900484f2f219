"""Every task family against T5's own functions, on awkward hand-built examples.

The reference is the `t5` package itself (0.9.4, installed without its
dependencies: see the Makefile), importing only `t5.data.preprocessors`,
`t5.data.postprocessors`, `t5.data.glue_utils` and `t5.evaluation.metrics`.
For each family, the same raw example goes through T5's preprocessor and
through the registered task's text preprocessors; the same predictions go
through T5's postprocessor and ours; the same postprocessed values through
T5's metrics and ours. Inputs use non-ASCII letters, underscores, dashes,
non-breaking spaces, quotes, HTML, unlabelled (-1) examples; predictions are
empty, determiner-only, invalid, differently cased or spaced.

MRQA has no T5 function: its reference is the prompt-tuning paper's
conversion (Python's `re.sub(r"\\s+", " ", s)`, then T5's `_pad_punctuation`
and `_string_join`).
"""
import math
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
try:  # pylint: disable=g-bad-import-order
  from t5.data import glue_utils
  from t5.data import postprocessors as t5_post
  from t5.data import preprocessors as t5_prep
  from t5.evaluation import metrics as t5_metrics
except ImportError as e:
  raise ImportError(
      "The task parity tests need the `t5` package as their reference: "
      "`make install`, or `pip install --no-deps -c "
      "requirements/constraints.txt t5` plus the test extra (babel).") from e

import tasks
from tasks import glue
from tasks import text_metrics

AWKWARD = ("Beyonc\u00e9 met \u201cETH Z\u00fcrich\u201d staff, 24\u201310, "
           "in snake_case.py\u00a0(v2) <br><b>it's \"done\"</b> \u2014 ok?")
SHORT = "na\u00efve caf\u00e9_bar\u00a0\u2013 'x'"


@pytest.fixture(scope="module", autouse=True)
def registered():
  tasks.register_all()


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.dtype == object:
    return [_decode(v) for v in value]
  return value


def _dataset(raw):
  """One example, or a list of same-shaped examples, as a tf.data pipeline."""
  if isinstance(raw, list):
    stacked = tf.nest.map_structure(lambda *xs: list(xs), *raw)
    return tf.data.Dataset.from_tensor_slices(stacked)
  return tf.data.Dataset.from_tensors(raw)


def ours(task_name, raw):
  """The registered task's text preprocessing (up to tokenization)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = _dataset(raw)
  for step in task.preprocessors:
    if step is seqio.preprocessors.tokenize:
      break
    ds = step(ds)
  return [{k: _decode(v) for k, v in ex.items()} for ex in tfds.as_numpy(ds)]


def theirs(dataset_fn, raw):
  """T5's preprocessor on the same raw example."""
  ds = dataset_fn(_dataset(raw))
  return [{k: _decode(v) for k, v in ex.items()} for ex in tfds.as_numpy(ds)]


def assert_same_examples(mine, reference):
  assert len(mine) == len(reference)
  for a, b in zip(mine, reference):
    for key, value in b.items():
      assert key in a, (key, a)
      np.testing.assert_equal(a[key], value, err_msg=key)


def assert_same_metrics(mine, reference):
  """Every key T5 reports, with the same value (nan equal to nan)."""
  assert reference, "T5 returned no metric"
  for key, value in reference.items():
    assert key in mine, (key, mine)
    if isinstance(value, float) and math.isnan(value):
      assert math.isnan(mine[key]), (key, mine[key])
    else:
      assert mine[key] == pytest.approx(float(value), abs=1e-9), key


def pretokenized(example):
  """The example as seqio hands it to a postprocessor (bytes, numpy)."""
  ex = {k: (v.encode() if isinstance(v, str) else np.asarray(v))
        for k, v in example.items()}
  ex["targets_pretokenized"] = example["targets"].encode()
  ex["inputs_pretokenized"] = example["inputs"].encode()
  return ex


def postprocessed(task, t5_fn, predictions, examples):
  """(ours, T5's) postprocessed targets and predictions, checked equal."""
  targets_ours, targets_t5, preds_ours, preds_t5 = [], [], [], []
  for prediction, example in zip(predictions, examples):
    ex = pretokenized(example)
    targets_ours.append(task.postprocess_fn(example["targets"], example=ex,
                                            is_target=True))
    targets_t5.append(t5_fn(example["targets"], example=ex, is_target=True))
    preds_ours.append(task.postprocess_fn(prediction, example=ex,
                                          is_target=False))
    preds_t5.append(t5_fn(prediction, example=ex, is_target=False))
  np.testing.assert_equal(targets_ours, targets_t5)
  np.testing.assert_equal(preds_ours, preds_t5)
  return targets_ours, preds_ours


def metrics_of(task, targets, predictions):
  out = {}
  for fn in task.metric_fns:
    out.update(fn(targets, predictions))
  return out


# =================================== GLUE =====================================
def glue_raw(config, label, text=AWKWARD):
  builder = tfds.builder_cls("glue").builder_configs[config]
  raw = {key: f"{key} {text}" for key in builder.text_features}
  raw["label"] = np.float32(label) if config == "stsb" else np.int64(label)
  raw["idx"] = np.int32(7)
  return raw


# Predictions for each class plus invalid ones, cycled over the examples.
INVALID_TEXTS = ["", "Entailment", " entailment", "entailment.", "<unk>",
                 "ETH Z\u00fcrich", "the"]


def test_glue_labels_are_tfds_label_classes():
  configs = tfds.builder_cls("glue").builder_configs
  assert set(glue.CONFIGS) == set(configs)
  for name, labels in glue.LABELS.items():
    assert list(labels) == list(configs[name].label_classes), name


@pytest.mark.parametrize("config", glue.CONFIGS)
@pytest.mark.parametrize("version", ["v002", "v200"])
def test_glue_matches_t5(config, version):
  builder = tfds.builder_cls("glue").builder_configs[config]
  task = seqio.get_mixture_or_task(f"glue_{config}_{version}")
  if config == "stsb":
    labels = [-1.0, 0.0, 0.1, 0.3, 2.5, 3.51, 4.9, 5.0]
    predictions = ["3.4", "0.0", "abc", "", " 2.0 ", "1e0", "5", "-1"]
  else:
    labels = list(range(-1, len(builder.label_classes)))
    labels = (labels * 3)[:8]
    names = list(builder.label_classes)
    predictions = [(names + INVALID_TEXTS)[i % (len(names) + 5)]
                   for i in range(len(labels))]
    predictions[0] = names[0]
  raws = [glue_raw(config, label) for label in labels]
  examples = ours(task.name, raws)
  assert_same_examples(
      examples, theirs(glue_utils.get_glue_text_preprocessor(builder), raws))
  # The taskless twin drops exactly the leading word.
  taskless = ours(f"taskless_glue_{config}_{version}", glue_raw(config, 1))[0]
  assert taskless["inputs"] == examples[0]["inputs"].split(" ", 1)[1]

  # Postprocessors on every example; metrics on the labelled ones (T5's
  # F1 refuses the unlabelled test data's -1 targets).
  targets, preds = postprocessed(task, glue_utils.get_glue_postprocess_fn(
      builder), predictions, examples)
  labelled = [i for i, label in enumerate(labels) if label >= 0]
  targets = [targets[i] for i in labelled]
  preds = [preds[i] for i in labelled]
  reference = {}
  for fn in glue_utils.get_glue_metric(config):
    reference.update(fn(list(targets), list(preds)))
  if config == "ax":  # T5 gives AX no metric; ours is CoLA's MCC.
    reference = glue_utils.get_glue_metric("cola")[0](targets, preds)
  assert_same_metrics(metrics_of(task, targets, preds), reference)


def test_stsb_postprocessor_on_odd_numbers():
  for text in ["nan", "inf", "3_4", "\u0663", "4.0\n", "1,5"]:
    mine = glue.postprocess_fn("stsb")(text)
    reference = t5_post.string_to_float(text)
    assert (mine == reference) or (math.isnan(mine) and math.isnan(reference))


# ================================= SuperGLUE ==================================
def sg_config(name):
  return tfds.builder_cls("super_glue").builder_configs[name]


SUPER_GLUE_RAW = {
    "boolq": {"question": "is it " + SHORT, "passage": AWKWARD},
    "cb": {"premise": AWKWARD, "hypothesis": SHORT},
    "copa": {"premise": AWKWARD, "choice1": SHORT, "choice2": "b_c",
             "question": "cause"},
    "rte": {"premise": AWKWARD, "hypothesis": SHORT},
    "wic": {"sentence1": AWKWARD, "sentence2": SHORT, "word": "caf\u00e9",
            "start1": 0, "end1": 3, "start2": 1, "end2": 4},
    "axb": {"sentence1": AWKWARD, "sentence2": SHORT},
    "axg": {"premise": AWKWARD, "hypothesis": SHORT},
}


@pytest.mark.parametrize("name", sorted(SUPER_GLUE_RAW))
def test_super_glue_classification_matches_t5(name):
  builder = sg_config(name)
  task = seqio.get_mixture_or_task(f"super_glue_{name}_v102")
  n = len(builder.label_classes)
  labels = ([-1] + list(range(n)) * 3)[:7]
  t5_fn = glue_utils.get_glue_text_preprocessor(builder)
  if name == "axb":
    rekey = lambda ds: t5_prep.rekey(ds, key_map={  # pylint: disable=g-long-lambda
        "premise": "sentence1", "hypothesis": "sentence2", "label": "label",
        "idx": "idx"})
    reference_fn = lambda ds: t5_fn(rekey(ds))
  else:
    reference_fn = t5_fn
  raws = [dict(SUPER_GLUE_RAW[name], label=np.int64(label), idx=np.int32(i))
          for i, label in enumerate(labels)]
  examples = ours(task.name, raws)
  assert_same_examples(examples, theirs(reference_fn, raws))
  names = list(builder.label_classes)
  predictions = [(names + INVALID_TEXTS)[i % (n + 4)]
                 for i in range(len(labels))]
  t5_post_fn = glue_utils.get_glue_postprocess_fn(builder)
  if name == "axg":
    # Ours adds the pair id for gender parity; the values are T5's.
    targets, preds = [], []
    for prediction, example in zip(predictions, examples):
      ex = pretokenized(example)
      target = task.postprocess_fn(example["targets"], example=ex,
                                   is_target=True)
      assert target["value"] == t5_post_fn(example["targets"], example=ex)
      pred = task.postprocess_fn(prediction, example=ex)
      assert pred == {"value": t5_post_fn(prediction, example=ex)}
      targets.append(target)
      preds.append(pred)
    reference = t5_metrics.accuracy([t["value"] for t in targets],
                                    [p["value"] for p in preds])
  else:
    targets, preds = postprocessed(task, t5_post_fn, predictions, examples)
    targets, preds = targets[1:], preds[1:]  # Scores need labels (not -1).
    reference = {}
    for fn in glue_utils.get_super_glue_metric(name):
      reference.update(fn(targets, preds))
    if name == "axb":  # T5 registers no AX-b metric; ours is T5's MCC.
      reference = glue_utils.get_glue_metric("cola")[0](targets, preds)
  assert_same_metrics(metrics_of(task, targets, preds), reference)


def test_axb_issue_example_scores_as_t5():
  task = seqio.get_mixture_or_task("super_glue_axb_v102")
  targets, preds = [0, 0, 0, 1, 1, 1], [0, 0, -1, 1, 1, -1]
  reference = glue_utils.get_glue_metric("cola")[0](targets, preds)
  assert reference["matthews_corrcoef"] == pytest.approx(57.735, abs=1e-3)
  assert_same_metrics(metrics_of(task, targets, preds), reference)


def test_multirc_matches_t5():
  builder = sg_config("multirc")
  task = seqio.get_mixture_or_task("super_glue_multirc_v102")
  examples = []
  for i, label in enumerate([1, 0, 1, 0, 0, 1]):
    raw = {"paragraph": "<b>Sent 1: </b>" + AWKWARD + "<br><b>Sent 2: </b>x",
           "question": "Who? " + SHORT, "answer": f"answer_{i} \u2013 it",
           "label": np.int64(label),
           "idx": {"paragraph": np.int32(0), "question": np.int32(i // 2),
                   "answer": np.int32(i)}}
    mine = ours(task.name, raw)
    assert_same_examples(
        mine, theirs(glue_utils.get_glue_text_preprocessor(builder), raw))
    examples += mine
  predictions = ["True", "False", "", "True", "true", "False"]
  targets, preds = postprocessed(task, glue_utils.get_glue_postprocess_fn(
      builder), predictions, examples)
  reference = {}
  for fn in glue_utils.get_super_glue_metric("multirc"):
    reference.update(fn(targets, preds))
  assert_same_metrics(metrics_of(task, targets, preds), reference)


def test_record_matches_t5():
  task = seqio.get_mixture_or_task("super_glue_record_v102")
  raws = [
      {"passage": AWKWARD + "\n@highlight\nETH Z\u00fcrich won\n@highlight\n"
                  "It's \"done\".\n@highlight\nend",
       "query": "@placeholder sold caf\u00e9_bar items.",
       "entities": ["ETH Z\u00fcrich", "Beyonc\u00e9"],
       "answers": ["ETH Z\u00fcrich", "ETH Zurich"],
       "idx": {"passage": np.int32(0), "query": np.int32(0)}},
      {"passage": "P.", "query": "@placeholder q", "entities": ["P"],
       "answers": np.array([], dtype=object).astype(bytes),
       "idx": {"passage": np.int32(1), "query": np.int32(3)}},
  ]
  examples = []
  for raw in raws:
    raw = dict(raw, answers=tf.constant(raw["answers"], tf.string))
    mine = ours(task.name, raw)
    assert_same_examples(mine, theirs(t5_prep.record, raw))
    examples += mine
  predictions = ["eth z\u00fcrich", "ETH Zurich!", "<unk>"]
  targets, preds = postprocessed(task, t5_post.record, predictions, examples)
  # T5's metric fails on a query without answers (max of nothing); ours
  # scores it 0. Compare on the answered queries.
  targets, preds = targets[:2], preds[:2]
  reference = glue_utils.get_super_glue_metric("record")[0](targets, preds)
  assert_same_metrics(metrics_of(task, targets, preds), reference)


WSC_RAWS = [
    {"text": "The city councilmen refused the demonstrators a permit "
             "because they feared violence.",
     "span1_text": "The city councilmen", "span2_text": "they",
     "span1_index": 0, "span2_index": 9, "label": 1},
    {"text": "Bob's caf\u00e9\u00a0\u2013 said Tom \u201cto\u201d him .",
     "span1_text": "Bob's caf\u00e9", "span2_text": "him",
     "span1_index": 0, "span2_index": 5, "label": 0},
    {"text": "The boy continued to whip the pony , and eventually the pony "
             "threw him over. John laughed out quite loud. \"Good for him,\" "
             "he said. ", "span1_text": "John", "span2_text": "him",
     "span1_index": 0, "span2_index": 22, "label": 1},
]


@pytest.mark.parametrize("predictions", [
    ["", "the", "The city councilmen"],
    ["councilmen", "Bob's caf\u00e9", "Bob"],
    ["this those", "caf\u00e9", "john"],
    ["their demonstrators", "bob's", "a John"],
])
def test_wsc_matches_t5(predictions):
  task = seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval")
  examples = []
  for i, raw in enumerate(WSC_RAWS):
    raw = dict(raw, idx=np.int32(i), label=np.int64(raw["label"]))
    mine = ours(task.name, raw)
    assert_same_examples(mine, theirs(
        lambda ds: t5_prep.wsc_simple(ds, correct_referent_only=False), raw))
    examples += mine
    train = ours("super_glue_wsc_v102_simple_train", raw)
    assert_same_examples(train, theirs(
        lambda ds: t5_prep.wsc_simple(ds, correct_referent_only=True), raw))
  targets, preds = postprocessed(task, t5_post.wsc_simple, predictions,
                                 examples)
  assert_same_metrics(metrics_of(task, targets, preds),
                      t5_metrics.accuracy(targets, preds))


def test_wsc_empty_predictions_score_zero_as_in_t5():
  task = seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval")
  labels = [1, 0, 0, 1, 1]
  examples = [{"targets": "Tom", "inputs": "wsc: x", "label": label}
              for label in labels]
  targets, preds = postprocessed(task, t5_post.wsc_simple,
                                 ["", " ", "the", "An", "those"], examples)
  assert metrics_of(task, targets, preds)["accuracy"] == 0.0


def test_dpr_matches_t5():
  task = seqio.get_mixture_or_task("dpr_v001_simple")
  for raw in [
      {"sentence": "Beyonc\u00e9 thanked Z\u00fcrich because she won.",
       "pronoun": "she", "candidates": ["Beyonc\u00e9", "Z\u00fcrich"],
       "label": 0},
      {"sentence": "The bee_keeper fed it, then it (the bee) left.",
       "pronoun": "it", "candidates": ["bee_keeper", "the bee"], "label": 1},
  ]:
    raw = dict(raw, label=np.int64(raw["label"]))
    assert_same_examples(ours(task.name, raw), theirs(
        t5_prep.definite_pronoun_resolution_simple, raw))


# ==================================== QA ======================================
SQUAD_RAWS = [
    {"id": "a1", "title": "Beyonc\u00e9",
     "context": AWKWARD + " The (NFL) champion\u00a0was  Denver\tBroncos.",
     "question": "Who won 24\u201310 at ETH Z\u00fcrich?",
     "answers": {"text": ["ETH Z\u00fcrich", "the ETH_Z\u00fcrich", "24\u201310"],
                 "answer_start": [0, 0, 0]}},
    {"id": "a2", "title": "t", "context": "It's \"<b>done</b>\".",
     "question": "What's done?", "answers": {"text": ["\"done\""],
                                             "answer_start": [6]}},
]
QA_PREDICTIONS = ["ETH Z\u00fcrich", "done"]


@pytest.mark.parametrize("name, include_context", [
    ("squad_v010_allanswers", True), ("squad_v010", True),
    ("squad_v010_context_free", False)])
def test_squad_matches_t5(name, include_context):
  task = seqio.get_mixture_or_task(name)
  examples = []
  for raw in SQUAD_RAWS:
    mine = ours(task.name, raw)
    assert_same_examples(mine, theirs(
        lambda ds: t5_prep.squad(ds, include_context=include_context), raw))
    examples += mine
  for predictions in (QA_PREDICTIONS, ["eth zurich", ""], ["the", "DONE!"]):
    targets = [t5_post.qa(None, example=pretokenized(ex), is_target=True)
               for ex in examples]
    if task.postprocess_fn is not None:
      assert targets == [task.postprocess_fn(
          None, example=pretokenized(ex), is_target=True) for ex in examples]
      assert [task.postprocess_fn(p) for p in predictions] == predictions
    assert_same_metrics(metrics_of(task, targets, predictions),
                        t5_metrics.squad(targets, predictions))


def test_issue_example_eth_zurich_scores_100():
  task = seqio.get_mixture_or_task("squad_v010_allanswers")
  ex = ours(task.name, SQUAD_RAWS[0])[0]
  assert ex["targets"] == "ETH Z\u00fcrich"
  targets = [task.postprocess_fn(None, example=pretokenized(ex),
                                 is_target=True)]
  assert metrics_of(task, targets, ["ETH Z\u00fcrich"]) == {"em": 100.0,
                                                            "f1": 100.0}


def _paper_mrqa(raw):
  """The prompt-tuning paper's MRQA conversion, from its two steps."""
  norm = lambda s: re.sub(r"\s+", " ", s)  # mrqa_to_tsv.normalize_whitespace
  pad = lambda s: _decode(t5_prep._pad_punctuation(tf.constant(s)).numpy())  # pylint: disable=protected-access
  question, context = pad(norm(raw["question"])), pad(norm(raw["context"]))
  inputs = t5_prep._string_join(  # pylint: disable=protected-access
      ["question:", question, "context:", context])
  answers = [pad(norm(a)) for a in raw["answers"]]
  return {"inputs": _decode(inputs.numpy()),
          "targets": pad(norm(raw["detected_answers"]["text"][0])),
          "answers": answers, "question": question, "context": context}


def test_mrqa_matches_the_papers_conversion():
  raw = {"qid": "q1", "subset": "DROP",
         "question": "How many\u00a0points\u2009(total)?\n",
         "context": AWKWARD + "\u3000Final:\u00a0\u00a024\u201310\u2028end",
         "answers": ["24\u201310", "24\u00a0\u2013 10"],
         "detected_answers": {"text": ["24\u201310\u00a0"]}}
  for name in ("mrqa_drop_v100", "mrqa_bio_asq_v100", "mrqa_squad_v100"):
    assert_same_examples(ours(name, raw), [_paper_mrqa(raw)])


# ================================ generation ==================================
def test_xsum_and_rouge_match_t5():
  raw = {"document": AWKWARD + " . Second sentence . ", "summary": SHORT,
         "id": "1"}
  assert_same_examples(ours("xsum", raw), theirs(
      lambda ds: t5_prep.summarize(ds, article_key="document",
                                   summary_key="summary"), raw))
  target = "The cat sat on the mat . It was caf\u00e9_bar time ."
  for prediction in ("The cat sat . It was time .", "", target):
    # One example: T5's bootstrap of the mean is the score itself.
    reference = t5_metrics.rouge([target], [prediction])
    assert_same_metrics(text_metrics.rouge([target], [prediction]), reference)


def test_bleu_matches_t5_with_its_tokenizer():
  targets = ["The cat sat on the mat.", "Z\u00fcrich won 24\u201310!"]
  predictions = ["The cat sat on a mat.", "Zurich won 24-10"]
  reference = t5_metrics.bleu(targets, predictions)
  mine = text_metrics.bleu_score([[t] for t in targets], predictions,
                                 tokenize="intl")
  assert mine == pytest.approx(reference["bleu"])


def test_squad_span_matches_t5():
  task = seqio.get_mixture_or_task("squad_v010_allanswers_span")
  raws = [dict(SQUAD_RAWS[0], answers={"text": ["Denver Broncos", "x"],
                                       "answer_start": [0, 0]}),
          dict(SQUAD_RAWS[0], answers={"text": ["ETH Z\u00fcrich", "y"],
                                       "answer_start": [0, 0]}),
          dict(SQUAD_RAWS[0], answers={"text": ["not in it", "z"],
                                       "answer_start": [0, 0]})]
  examples = []
  for raw in raws:
    mine = ours(task.name, raw)
    assert_same_examples(mine, theirs(t5_prep.squad_span_space_tokenized,
                                      raw))
    examples += mine
  assert len(examples) == 2  # The answer not in the context is dropped.
  targets, preds = postprocessed(task, t5_post.span_qa,
                                 ["start: 3 end: 4", "start: x end: 2"],
                                 examples)
  for predictions in (preds, [e["targets"] for e in examples], ["", "3"]):
    assert_same_metrics(metrics_of(task, targets, predictions),
                        t5_metrics.span_squad(targets, predictions))


# ============================ sentinels and mixtures ==========================
def test_sentinel_twins_have_t5s_names_and_rates():
  mixture = seqio.get_mixture_or_task("super_glue_v102_proportional_sentinel")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == glue_utils.get_super_glue_weight_mapping_sentinel()


def test_sentinel_twin_adds_extra_id_0(t5_vocab_path, monkeypatch):
  monkeypatch.setenv(tasks.vocab.ENV_VAR, t5_vocab_path)
  raw = dict(SUPER_GLUE_RAW["rte"], label=np.int64(1), idx=np.int32(0))

  def tokens(name):
    task = seqio.get_mixture_or_task(name)
    ds = task.preprocess_precache(tf.data.Dataset.from_tensors(raw), seed=0)
    ds = task.preprocess_postcache(ds, {"inputs": 256, "targets": 8}, seed=0)
    return next(iter(tfds.as_numpy(ds)))

  plain = tokens("super_glue_rte_v102")
  sentinel = tokens("super_glue_rte_v102_1_sentinel")
  vocab = tasks.get_vocabulary()
  extra_id_0 = vocab.vocab_size - 1
  eos = [vocab.eos_id]
  assert list(sentinel["inputs"]) == (
      list(plain["inputs"])[:-1] + [extra_id_0] + eos)
  assert list(sentinel["targets"]) == (
      [extra_id_0] + list(plain["targets"])[:-1] + eos)
  task = seqio.get_mixture_or_task("super_glue_rte_v102_1_sentinel")
  assert task.postprocess_fn("<extra_id_0> not_entailment") == 1


def test_mixture_rates_are_t5s():
  def rates(name):
    mixture = seqio.get_mixture_or_task(name)
    return {t.name: mixture.get_rate(t) for t in mixture.tasks}

  assert rates("glue_v002_proportional") == glue_utils.get_glue_weight_mapping()
  super_glue_rates = glue_utils.get_super_glue_weight_mapping()
  assert rates("super_glue_v102_proportional") == super_glue_rates
  assert rates("wsc_dpr_simple_proportional") == {
      name: super_glue_rates[name] for name in (
          "dpr_v001_simple", "super_glue_wsc_v102_simple_train",
          "super_glue_wsc_v102_simple_eval")}
  # Leave-one-out: T5's members that are registered here, T5's rates.
  both = {**glue_utils.get_glue_weight_mapping(), **super_glue_rates}
  squad_rates = rates("leave_one_out_squad_v010_allanswers")
  assert squad_rates == {
      name: rate * (0.5 if "glue" in name and "rte" in name else 1.0)
      for name, rate in both.items()}
  assert rates("leave_one_out_super_glue_v102_proportional") == dict(
      glue_utils.get_glue_weight_mapping(), squad_v010_allanswers=87_599.)
