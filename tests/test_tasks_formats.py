"""Golden text for every preprocessor: the input/target formats are the contract.

Each case feeds a hand-written, real-looking raw TFDS example through the
registered task's text preprocessors (everything before tokenization).
"""
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from tasks import generation
from tasks import sources


def formatted(task_name, raw):
  """Runs `raw` through the task's text preprocessors; returns all outputs."""
  task = seqio.get_mixture_or_task(task_name)
  ds = tf.data.Dataset.from_tensors(raw)
  for step in task.preprocessors:
    if step is seqio.preprocessors.tokenize:
      break
    ds = step(ds)
  return [{k: (v.decode() if isinstance(v, bytes) else v)
           for k, v in ex.items()} for ex in tfds.as_numpy(ds)]


def only(task_name, raw):
  outputs = formatted(task_name, raw)
  assert len(outputs) == 1, outputs
  return outputs[0]


@pytest.fixture(scope="module", autouse=True)
def registered():
  tasks.register_all()


# ================================= SuperGLUE ==================================
RTE = {
    "premise": "Dana Reeve, the widow of the actor Christopher Reeve, has died "
               "of lung cancer at age 44, according to the Christopher Reeve "
               "Foundation.",
    "hypothesis": "Christopher Reeve had an accident.",
    "label": 1, "idx": 0,
}


def test_rte_and_its_taskless_twin():
  ex = only("super_glue_rte_v102", RTE)
  assert ex["inputs"] == (
      "rte hypothesis: Christopher Reeve had an accident. premise: Dana "
      "Reeve, the widow of the actor Christopher Reeve, has died of lung "
      "cancer at age 44, according to the Christopher Reeve Foundation.")
  assert ex["targets"] == "not_entailment"
  assert ex["idx"] == 0
  taskless = only("taskless_super_glue_rte_v102", RTE)
  assert taskless["inputs"] == ex["inputs"][len("rte "):]
  assert taskless["targets"] == "not_entailment"


def test_unlabelled_test_example_gets_unk_target():
  assert only("super_glue_rte_v102", dict(RTE, label=-1))["targets"] == "<unk>"


def test_boolq():
  ex = only("super_glue_boolq_v102", {
      "question": "do iran and afghanistan speak the same language",
      "passage": "Persian language -- Persian is spoken in Iran and "
                 "Afghanistan.",
      "label": 1, "idx": 3})
  assert ex["inputs"] == (
      "boolq passage: Persian language -- Persian is spoken in Iran and "
      "Afghanistan. question: do iran and afghanistan speak the same "
      "language")
  assert ex["targets"] == "True"


def test_cb():
  ex = only("super_glue_cb_v102", {
      "premise": "It was a complex language. Not written down but handed "
                 "down.",
      "hypothesis": "the language was peeled down", "label": 0, "idx": 0})
  assert ex["inputs"] == (
      "cb hypothesis: the language was peeled down premise: It was a "
      "complex language. Not written down but handed down.")
  assert ex["targets"] == "entailment"


def test_copa():
  ex = only("super_glue_copa_v102", {
      "premise": "My body cast a shadow over the grass.",
      "choice1": "The sun was rising.", "choice2": "The grass was cut.",
      "question": "cause", "label": 0, "idx": 0})
  assert ex["inputs"] == (
      "copa choice1: The sun was rising. choice2: The grass was cut. "
      "premise: My body cast a shadow over the grass. question: cause")
  assert ex["targets"] == "choice1"


def test_multirc_strips_html_and_keeps_ids():
  ex = only("super_glue_multirc_v102", {
      "paragraph": "<b>Sent 1: </b>Alien crews arrived.<br><b>Sent 2: </b>"
                   "They left.<br>",
      "question": "Who arrived?", "answer": "Alien crews", "label": 1,
      "idx": {"paragraph": 4, "question": 17, "answer": 2}})
  assert ex["inputs"] == (
      "multirc question: Who arrived? answer: Alien crews paragraph: Sent 1: "
      "Alien crews arrived. Sent 2: They left. ")
  assert ex["targets"] == "True"
  assert (ex["idx/paragraph"], ex["idx/question"], ex["idx/answer"]) == (
      4, 17, 2)
  assert "idx" not in ex


def test_wic():
  ex = only("super_glue_wic_v102", {
      "sentence1": "Do you want to come over to my place later?",
      "sentence2": "A political system with no place for the less prominent "
                   "groups.",
      "word": "place", "start1": 31, "end1": 36, "start2": 27, "end2": 32,
      "label": 0, "idx": 0})
  assert ex["inputs"] == (
      "wic sentence1: Do you want to come over to my place later? sentence2: "
      "A political system with no place for the less prominent groups. "
      "word: place")
  assert ex["targets"] == "False"


def test_record_one_example_per_answer():
  outputs = formatted("super_glue_record_v102", {
      "passage": "The harbor town was busy.\n@highlight\nBoats arrived "
                 "early\n@highlight\nFishermen sold their catch",
      "query": "@placeholder sold fish at the market.",
      "entities": ["harbor", "Fishermen"],
      "answers": ["Fishermen", "fishermen"],
      "idx": {"passage": 5, "query": 9}})
  assert [o["targets"] for o in outputs] == ["Fishermen", "fishermen"]
  for o in outputs:
    assert o["inputs"] == (
        "record query: @placeholder sold fish at the market. entities: "
        "harbor, Fishermen passage: The harbor town was busy. Boats arrived "
        "early. Fishermen sold their catch")
    assert list(o["answers"]) == [b"Fishermen", b"fishermen"]
    assert (o["idx/passage"], o["idx/query"]) == (5, 9)
  taskless = formatted("taskless_super_glue_record_v102", {
      "passage": "P.", "query": "@placeholder q", "entities": ["P"],
      "answers": tf.constant([], tf.string),
      "idx": {"passage": 0, "query": 0}})
  assert [o["inputs"] for o in taskless] == [
      "query: @placeholder q entities: P passage: P."]
  assert taskless[0]["targets"] == "<unk>"


WSC = {
    "text": "Mark told Pete many lies about himself, which Pete included in "
            "his book. He should have been more truthful.",
    "span1_text": "Mark", "span1_index": 0, "span2_text": "He",
    "span2_index": 13, "label": 1, "idx": 7,
}


def test_wsc_simple_eval_and_train():
  ex = only("super_glue_wsc_v102_simple_eval", WSC)
  assert ex["inputs"] == (
      "wsc: Mark told Pete many lies about himself, which Pete included in "
      "his book. *He* should have been more truthful.")
  assert ex["targets"] == "Mark"
  assert (ex["label"], ex["idx"]) == (1, 7)
  wrong = dict(WSC, span1_text="Pete", span1_index=2, label=0)
  assert only("super_glue_wsc_v102_simple_eval", wrong)["targets"] == "Pete"
  # Training keeps only examples whose candidate is the true referent.
  assert formatted("super_glue_wsc_v102_simple_train", wrong) == []
  assert only("taskless_super_glue_wsc_v102_simple_train", WSC)[
      "inputs"].startswith("Mark told Pete")


def test_wsc_special_case_with_wrong_pronoun_index():
  text = ("The boy continued to whip the pony , and eventually the pony "
          "threw him over. John laughed out quite loud. \"Good for him,\" he "
          "said. ")
  ex = only("super_glue_wsc_v102_simple_eval", dict(
      WSC, text=text, span1_text="The boy", span2_text="him",
      span2_index=22))
  assert ex["inputs"] == (
      "wsc: The boy continued to whip the pony , and eventually the pony "
      "threw him over. John laughed out quite loud. \"Good for *him* ,\" he "
      "said.")


def test_dpr_simple():
  ex = only("dpr_v001_simple", {
      "sentence": "The bee landed on the flower because it had pollen.",
      "pronoun": "it", "candidates": ["The bee", "the flower"], "label": 1})
  assert ex["inputs"] == (
      "wsc: The bee landed on the flower because *it* had pollen.")
  assert ex["targets"] == "the flower"


def test_axb_is_cast_as_rte():
  ex = only("super_glue_axb_v102", {
      "sentence1": "The cat sat on the mat.",
      "sentence2": "The cat did not sit on the mat.", "label": 1, "idx": 0})
  assert ex["inputs"] == ("rte hypothesis: The cat did not sit on the mat. "
                          "premise: The cat sat on the mat.")
  assert ex["targets"] == "not_entailment"


def test_axg_is_cast_as_rte():
  ex = only("super_glue_axg_v102", {
      "premise": "The nurse notified the patient that his shift would be "
                 "ending in an hour.",
      "hypothesis": "The nurse has a shift.", "label": 0, "idx": 1})
  assert ex["inputs"] == (
      "rte hypothesis: The nurse has a shift. premise: The nurse notified "
      "the patient that his shift would be ending in an hour.")
  assert ex["targets"] == "entailment"


# ==================================== GLUE ====================================
QQP = {"question1": "How do I lose weight fast?",
       "question2": "What is the fastest way to lose weight?", "label": 1,
       "idx": 2}
MRPC = {"sentence1": "Amrozi accused his brother of deliberately distorting "
                     "his evidence.",
        "sentence2": "Referring to him as only \" the witness \" , Amrozi "
                     "accused his brother of distorting his evidence.",
        "label": 1, "idx": 0}


def test_glue_formats():
  ex = only("glue_qqp_v200", QQP)
  assert ex["inputs"] == ("qqp question1: How do I lose weight fast? "
                          "question2: What is the fastest way to lose weight?")
  assert ex["targets"] == "duplicate"
  ex = only("glue_mrpc_v002", MRPC)
  assert ex["inputs"] == (
      "mrpc sentence1: Amrozi accused his brother of deliberately distorting "
      "his evidence. sentence2: Referring to him as only \" the witness \" , "
      "Amrozi accused his brother of distorting his evidence.")
  assert ex["targets"] == "equivalent"
  ex = only("glue_sst2_v200", {
      "sentence": "it 's a charming and often affecting journey . ",
      "label": 1, "idx": 0})
  assert ex["inputs"] == (
      "sst2 sentence: it 's a charming and often affecting journey . ")
  assert ex["targets"] == "positive"


def test_paraphrase_transfer_uses_source_prefix_and_labels():
  ex = only("glue_mrpc_as_qqp_v200", MRPC)
  assert ex["inputs"].startswith("qqp sentence1: Amrozi accused")
  assert ex["targets"] == "duplicate"
  assert only("glue_mrpc_as_qqp_v200", dict(MRPC, label=0))[
      "targets"] == "not_duplicate"
  ex = only("glue_qqp_as_mrpc_v200", QQP)
  assert ex["inputs"] == ("mrpc question1: How do I lose weight fast? "
                          "question2: What is the fastest way to lose weight?")
  assert ex["targets"] == "equivalent"
  # The taskless transfer inputs are exactly the target task's taskless ones.
  assert (only("taskless_glue_mrpc_as_qqp_v200", MRPC)["inputs"] ==
          only("taskless_glue_mrpc_v200", MRPC)["inputs"])
  assert tasks.get_label_strings("glue_mrpc_as_qqp_v200") == [
      "not_duplicate", "duplicate"]


# ===================================== QA =====================================
def test_squad_pads_punctuation_like_t5():
  ex = only("squad_v010_allanswers", {
      "id": "56be4db0acb8001400a502ec", "title": "Super_Bowl_50",
      "context": "Super Bowl 50 was an American football game to determine "
                 "the champion of the National Football League (NFL) for the "
                 "2015 season.",
      "question": "Which NFL team represented the AFC at Super Bowl 50?",
      "answers": {"text": ["Denver Broncos", "the Broncos"],
                  "answer_start": [177, 181]}})
  assert ex["inputs"] == (
      "question: Which NFL team represented the AFC at Super Bowl 50 ? "
      "context: Super Bowl 50 was an American football game to determine "
      "the champion of the National Football League ( NFL ) for the 2015 "
      "season . ")
  assert ex["targets"] == "Denver Broncos"
  assert list(ex["answers"]) == [b"Denver Broncos", b"the Broncos"]
  assert only("taskless_squad_v010_allanswers", {
      "id": "x", "title": "t", "context": "c", "question": "q",
      "answers": {"text": ["a"], "answer_start": [0]}})["inputs"] == (
          "question: q context: c")


def test_squad_pads_ascii_punctuation_only():
  # T5's [[:punct:]] is ASCII: letters with accents, en dashes and
  # non-breaking spaces stay, "_" is padded.
  ex = only("squad_v010_allanswers", {
      "id": "x", "title": "t",
      "context": "Beyonc\u00e9 studied at ETH Z\u00fcrich; 24\u201310 in "
                 "snake_case.py\u00a0(v2)",
      "question": "Where?",
      "answers": {"text": ["ETH Z\u00fcrich"], "answer_start": [0]}})
  assert ex["inputs"] == (
      "question: Where ? context: Beyonc\u00e9 studied at ETH Z\u00fcrich ; "
      "24\u201310 in snake _ case . py\u00a0 ( v2 ) ")
  assert ex["targets"] == "ETH Z\u00fcrich"


def test_mrqa_turns_unicode_spaces_into_spaces_before_padding():
  ex = only("mrqa_drop_v100", {
      "qid": "q", "subset": "DROP", "question": "Who?\u00a0(x)",
      "context": "A\u00a0\u00a0B\u2009C\u3000D",
      "answers": ["A\u00a0B"], "detected_answers": {"text": ["A\u00a0B"]}})
  assert ex["inputs"] == "question: Who ? ( x ) context: A B C D"
  assert ex["targets"] == "A B"
  assert list(ex["answers"]) == [b"A B"]


def test_mrqa_targets_first_detected_answer():
  ex = only("mrqa_bio_asq_v100", {
      "qid": "q1", "subset": "BioASQ",
      "question": "Which gene is mutated in this syndrome?",
      "context": "The BRCA1 gene, mutated here, causes it.",
      "answers": ["BRCA1", "BRCA1 gene"],
      "detected_answers": {"text": ["BRCA1 gene"]}})
  assert ex["inputs"] == (
      "question: Which gene is mutated in this syndrome ? context: The BRCA1 "
      "gene , mutated here , causes it . ")
  assert ex["targets"] == "BRCA1 gene"
  assert list(ex["answers"]) == [b"BRCA1", b"BRCA1 gene"]


# ================================= generation =================================
def test_e2e_table_linearization():
  ex = only("e2e_nlg", {
      "input_text": {"table": {
          "column_header": ["name", "eatType", "food", "area"],
          "row_number": np.array([1, 1, 1, 1], np.int16),
          "content": ["The Eagle", "coffee shop", "French", "riverside"]}},
      "target_text": "The Eagle is a French coffee shop by the riverside."})
  assert ex["inputs"] == ("e2e_nlg: name : The Eagle | eatType : coffee shop "
                          "| food : French | area : riverside")
  assert ex["targets"] == "The Eagle is a French coffee shop by the riverside."
  assert only("taskless_e2e_nlg_n50", {
      "input_text": {"table": {
          "column_header": ["name"], "row_number": np.array([1], np.int16),
          "content": ["Aromi"]}},
      "target_text": "Aromi."})["inputs"] == "name : Aromi"


WEB_NLG = {
    "input_text": {
        "table": {
            "column_header": ["subject", "predicate", "object"] * 2,
            "row_number": np.array([0, 0, 0, 1, 1, 1], np.int16),
            "content": ["Aarhus_Airport", "cityServed", "\"Aarhus, Denmark\"",
                        "Aarhus_Airport", "runwayLength", "2776.0"]},
        "context": "Airport"},
    "target_text": "Aarhus Airport serves Aarhus, Denmark."}


def test_web_nlg_and_dart_triples():
  ex = only("web_nlg", WEB_NLG)
  assert ex["inputs"] == (
      "web_nlg: Aarhus_Airport : cityServed : \"Aarhus, Denmark\" | "
      "Aarhus_Airport : runwayLength : 2776.0")
  assert ex["category"] == "Airport"
  dart = {"input_text": {"table": WEB_NLG["input_text"]["table"]},
          "target_text": "t"}
  assert only("dart", dart)["inputs"] == (
      "dart: Aarhus_Airport : cityServed : \"Aarhus, Denmark\" | "
      "Aarhus_Airport : runwayLength : 2776.0")
  assert only("taskless_dart", dart)["inputs"].startswith("Aarhus_Airport")


def test_xsum_summarize_prefix():
  ex = only("xsum", {"document": "The council met on Monday. It voted.",
                     "summary": "A council voted."})
  assert ex["inputs"] == "summarize: The council met on Monday. It voted."
  assert ex["targets"] == "A council voted."
  assert only("taskless_xsum", {"document": "Doc text.", "summary": "s"})[
      "inputs"] == "Doc text."


def test_web_nlg_seen_split_keeps_training_categories():
  source = seqio.get_mixture_or_task("web_nlg").source
  transform = source._transforms["test_seen"]  # pylint: disable=protected-access
  categories = ["Airport", "Artist", "Food", "Politician", "WrittenWork"]
  ds = tf.data.Dataset.from_tensor_slices(
      {"input_text": {"context": categories}})
  kept = [x["input_text"]["context"].decode()
          for x in tfds.as_numpy(transform(ds))]
  assert kept == ["Airport", "Food", "WrittenWork"]
  assert not set(generation.WEB_NLG_SEEN_CATEGORIES) & set(
      generation.WEB_NLG_UNSEEN_CATEGORIES)


def test_fixed_subset_is_deterministic_and_seeded():
  ds = tf.data.Dataset.range(1000)
  first = list(tfds.as_numpy(sources.fixed_subset(50, seed=0)(ds)))
  again = list(tfds.as_numpy(sources.fixed_subset(50, seed=0)(ds)))
  other = list(tfds.as_numpy(sources.fixed_subset(50, seed=1)(ds)))
  assert first == again and len(first) == 50 == len(set(first))
  assert first == sorted(first) and first != other
  assert len(list(sources.fixed_subset(50, seed=0)(ds.take(7)))) == 7
  task = seqio.get_mixture_or_task("xsum_n200")
  assert task.num_input_examples("train") == 200


# ================================ metadata ====================================
def test_label_strings_and_prefixes():
  assert tasks.get_label_strings("super_glue_cb_v102") == [
      "entailment", "contradiction", "neutral"]
  assert tasks.get_label_strings("taskless_glue_sst2_v200") == [
      "negative", "positive"]
  assert tasks.get_label_strings("super_glue_copa_v102") == [
      "choice1", "choice2"]
  assert tasks.get_label_strings("super_glue_record_v102") is None
  assert tasks.get_label_strings("xsum") is None
  assert tasks.get_label_strings("glue_qqp_to_mrpc_v200") == [
      "not_duplicate", "duplicate"]
  assert tasks.get_label_strings("super_glue_v102_proportional") is None
  assert tasks.TASK_PREFIXES["super_glue_rte_v102"] == "rte"
  assert tasks.get_task_prefix("super_glue_wsc_v102_simple_eval") == "wsc:"
  assert tasks.get_task_prefix("taskless_super_glue_rte_v102") is None
  assert tasks.get_task_prefix("squad_v010_allanswers") is None
  with pytest.raises(ValueError, match="python -m tasks.list"):
    tasks.get_label_strings("no_such_task")
