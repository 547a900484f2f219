"""The prompt-tuning code's task variants: task_index_, _examples, transfer
aliases, mt5_ twins (the mT5 vocabulary stood in for by T5's)."""
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from tasks import examples as examples_lib
from tasks import registry
from tasks import variants
from tasks import vocab

RTE = {"sentence1": "Beyonc\u00e9 sang.", "sentence2": "Someone sang.",
       "label": np.int64(0), "idx": np.int32(3)}
SG_RTE = {"premise": "Beyonc\u00e9 sang.", "hypothesis": "Someone sang.",
          "label": np.int64(0), "idx": np.int32(3)}


@pytest.fixture(scope="module", autouse=True)
def registered():
  tasks.register_all()


@pytest.fixture()
def t5_vocab(monkeypatch, t5_vocab_path):
  monkeypatch.setenv(vocab.ENV_VAR, t5_vocab_path)
  monkeypatch.setenv(vocab.MT5_ENV_VAR, t5_vocab_path)
  return t5_vocab_path


def tokens(name, raw):
  task = seqio.get_mixture_or_task(name)
  ds = task.preprocess_precache(tf.data.Dataset.from_tensors(raw), seed=0)
  ds = task.preprocess_postcache(ds, {"inputs": 128, "targets": 16}, seed=0)
  return [{k: v for k, v in ex.items()} for ex in tfds.as_numpy(ds)]


@pytest.mark.parametrize("name, raw, index", [
    ("glue_rte_v002", RTE, 5),
    ("glue_mnli_matched_v200", {"premise": "p", "hypothesis": "h",
                                "label": np.int64(1), "idx": np.int32(0)}, 1),
    ("glue_mrpc_from_qqp_v002", {"sentence1": "a", "sentence2": "b",
                                 "label": np.int64(1), "idx": np.int32(0)}, 2),
    ("super_glue_axb_v102", {"sentence1": "a", "sentence2": "b",
                             "label": np.int64(1), "idx": np.int32(0)}, 5),
    ("super_glue_rte_v102", SG_RTE, 5),
    ("dpr_v001_simple", {"sentence": "Bob saw Tom when he ran.",
                         "pronoun": "he", "candidates": ["Bob", "Tom"],
                         "label": np.int64(1)}, 7),
])
def test_task_index_token_leads_the_taskless_inputs(t5_vocab, name, raw,
                                                    index):
  taskless = tokens(registry.TASKLESS + name, raw)[0]
  indexed = tokens(variants.TASK_INDEX + name, raw)[0]
  extra_id = tasks.get_vocabulary().vocab_size - 1 - index
  assert tasks.get_vocabulary().decode([extra_id]) == f"<extra_id_{index}>"
  assert list(indexed["inputs"]) == [extra_id] + list(taskless["inputs"])
  assert list(indexed["targets"]) == list(taskless["targets"])
  # The examples twin of the indexed task is the same data.
  twin = tokens(variants.TASK_INDEX + name + examples_lib.SUFFIX, raw)[0]
  assert list(twin["inputs"]) == list(indexed["inputs"])


def test_task_indices_are_sorted_config_positions():
  assert variants.GLUE_INDEX == {
      "cola": 0, "mnli": 1, "mrpc": 2, "qnli": 3, "qqp": 4, "rte": 5,
      "sst2": 6, "stsb": 7, "wnli": 8, "ax": 1, "mnli_matched": 1,
      "mnli_mismatched": 1}
  assert variants.SUPER_GLUE_INDEX["wsc"] == 7
  assert variants.SUPER_GLUE_INDEX["axg"] == variants.SUPER_GLUE_INDEX["rte"]


def test_examples_twins_keep_metrics_and_carry_a_spec():
  base = seqio.get_mixture_or_task("super_glue_cb_v102")
  twin = seqio.get_mixture_or_task("super_glue_cb_v102_examples")
  assert [f.__name__ for f in twin.metric_fns] == [
      f.__name__ for f in base.metric_fns]
  assert examples_lib.examples_spec("super_glue_cb_v102") is None
  spec = examples_lib.examples_spec("taskless_super_glue_cb_v102_examples")
  assert spec.title == "cb" and not spec.qa
  assert examples_lib.examples_spec("mrqa_bioasq_v001_examples").qa


def test_text_examples_markdown_and_negative_sample():
  spec = examples_lib.ExamplesSpec(title="rte", num_examples=8, seed=0)
  raws = [{"inputs_pretokenized": b"rte a | b", "targets_pretokenized":
           b"entailment"}, {"inputs_pretokenized": b"rte c\nd",
                            "targets_pretokenized": b"not_entailment"}]
  out = examples_lib.text_examples(spec, raws, ["entailment", "garbage"],
                                   [0, 1], [0, -1])
  assert set(out) == {"rte samples", "rte negative samples"}
  assert "| rte a \\| b | entailment | entailment |" in out["rte samples"]
  assert "| rte c d | not_entailment | garbage |" in out["rte samples"]
  negative = out["rte negative samples"].splitlines()
  assert negative[2:] == ["| rte c d | not_entailment | garbage |"]
  qa_spec = examples_lib.ExamplesSpec(title="squad", qa=True, seed=0)
  qa_out = examples_lib.text_examples(
      qa_spec, [{"question": b"Who?", "context": b"ETH", "answers":
                 [b"ETH", b"ETH"]}], ["ETH"], [["ETH"]], ["ETH"])
  assert "| Who? | ETH | ETH | ETH |" in qa_out["squad samples"]


@pytest.mark.parametrize("name, predictions, expected", [
    ("glue_mrpc_from_qqp_v002",
     ["duplicate", "not_duplicate", "equivalent", "Duplicate", ""],
     [1, 0, 1, -1, -1]),
    ("glue_qqp_from_mrpc_v002",
     ["equivalent", "not_equivalent", "duplicate", "equivalent."],
     [1, 0, 1, -1]),
])
def test_glue_from_translates_predictions_to_the_targets_labels(
    name, predictions, expected):
  task = seqio.get_mixture_or_task(name)
  assert [task.postprocess_fn(p) for p in predictions] == expected
  target = "equivalent" if "mrpc_from" in name else "duplicate"
  assert task.postprocess_fn(target, example={}, is_target=True) == 1
  assert tasks.get_label_strings(name) == (
      ["not_duplicate", "duplicate"] if "mrpc_from" in name else
      ["not_equivalent", "equivalent"])
  mixture = seqio.get_mixture_or_task(
      name.replace("_v002", "_zeroshot_v002"))
  assert sorted(t.name for t in mixture.tasks) == sorted(
      [name, "glue_qqp_v002" if "mrpc_from" in name else "glue_mrpc_v002"])


def test_mrqa_v001_aliases_are_the_tfds_tasks():
  raw = {"qid": "q", "subset": "BioASQ", "question": "Which?\u00a0",
         "context": "BRCA1 (gene).", "answers": ["BRCA1"],
         "detected_answers": {"text": ["BRCA1"]}}

  def text(name):
    task = seqio.get_mixture_or_task(name)
    ds = tf.data.Dataset.from_tensors(raw)
    for step in task.preprocessors:
      if step is seqio.preprocessors.tokenize:
        break
      ds = step(ds)
    return next(iter(tfds.as_numpy(ds)))["inputs"]

  assert text("mrqa_bioasq_v001") == text("mrqa_bio_asq_v100") == (
      b"question: Which ? context: BRCA1 ( gene ) . ")
  squad_to = seqio.get_mixture_or_task("squad_to_textbookqa_examples")
  assert sorted(t.name for t in squad_to.tasks) == [
      "mrqa_textbookqa_v001_examples", "squad_v010_allanswers_examples"]
  assert len(seqio.get_mixture_or_task("squad_to_mrqa").tasks) == 7


def test_every_task_and_mixture_has_an_mt5_twin():
  names = [n for n in list(seqio.TaskRegistry.names()) +
           list(seqio.MixtureRegistry.names())
           if registry.is_ours(n) and not n.startswith("mt5_")
           and vocab.VOCABULARY in [
               f.vocabulary for f in
               seqio.get_mixture_or_task(n).output_features.values()]]
  assert len(names) > 400
  missing = [n for n in names if "mt5_" + n not in seqio.TaskRegistry.names()
             and "mt5_" + n not in seqio.MixtureRegistry.names()]
  assert not missing
  twin = seqio.get_mixture_or_task("mt5_super_glue_rte_v102")
  assert twin.output_features["targets"].vocabulary is vocab.MT5_VOCABULARY
  assert tasks.task_vocabulary("mt5_glue_v002_proportional") is (
      vocab.MT5_VOCABULARY)
  assert tasks.get_label_strings("mt5_super_glue_rte_v102") == [
      "entailment", "not_entailment"]


def test_mt5_twin_tokenizes_with_the_mt5_vocabulary(t5_vocab, tmp_path,
                                                    monkeypatch):
  # With the T5 model standing in for mT5's, the twins' tokens are T5's.
  np.testing.assert_equal(tokens("mt5_super_glue_rte_v102", SG_RTE),
                          tokens("super_glue_rte_v102", SG_RTE))
  indexed = tokens("mt5_task_index_super_glue_rte_v102", SG_RTE)[0]
  assert indexed["inputs"][0] == vocab.MT5_VOCABULARY.vocab_size - 1 - 5
  sentinel = seqio.get_mixture_or_task("mt5_super_glue_rte_v102_1_sentinel")
  assert sentinel.postprocess_fn("<extra_id_0> not_entailment") == 1
  # A missing mT5 model is a clear error naming both overrides.
  monkeypatch.setenv(vocab.MT5_ENV_VAR, str(tmp_path / "missing.model"))
  with pytest.raises(OSError, match="PROMPT_TUNING_MT5_VOCAB") as error:
    _ = vocab.MT5_VOCABULARY.vocab_size
  assert "tasks.vocab.mt5_vocabulary_path.path" in str(error.value)
  assert "missing.model" in str(error.value)
  # Inside a pipeline, TF wraps it but keeps the message.
  with pytest.raises(Exception, match="PROMPT_TUNING_MT5_VOCAB"):
    tokens("mt5_super_glue_rte_v102", SG_RTE)
  # The T5 tasks are untouched by the mT5 setting.
  assert tokens("super_glue_rte_v102", SG_RTE)
