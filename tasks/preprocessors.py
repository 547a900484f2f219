"""Text preprocessors: raw TFDS examples -> {"inputs": str, "targets": str}.

The formats follow T5 (Raffel et al., 2020) exactly, since the formats are
the contract that makes scores comparable with the papers. Each function is
written with TF string ops so it runs inside `tf.data`; every preprocessor
keeps the fields the postprocessors need (`idx`, `label`, `answers`, ...).

All preprocessors tolerate malformed examples (e.g. empty answer lists or
out-of-range indices, as `tfds.testing.mock_data` produces) without crashing;
on real data they produce T5's text.
"""
from typing import Optional, Sequence

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# The functions below use TF ops only (no tensor-dependent Python control
# flow), so AutoGraph conversion is skipped: it only slowed pipeline builds.
_plain = tf.autograph.experimental.do_not_convert


# ============================== small helpers =================================
def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """T5's SQuAD spacing: a space around every ASCII punctuation character.

  The same RE2 expressions as T5's `_pad_punctuation`: `[[:punct:]]` is
  ASCII only (!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~, so "_" is padded too), and
  `\\s` is ASCII whitespace only: letters such as "é" or "ü", dashes such as
  "–" and a non-breaking space are left as they are.

  Args:
    text: string tensor of any shape.

  Returns:
    string tensor of the same shape; runs of ASCII whitespace collapsed to one
    space (leading/trailing spaces are kept, as in T5).
  """
  text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


# Python's `\s` on str (every character whose str.isspace() is True), which
# the prompt-tuning code's MRQA conversion (`re.sub(r"\s+", " ", s)`) uses:
# RE2's `\s` is ASCII only, so the class is spelled out.
_UNICODE_SPACE = (r"[\t\n\x{0b}\f\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}"
                  r"\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}"
                  r"\x{3000}]+")


def normalize_unicode_whitespace(text: tf.Tensor) -> tf.Tensor:
  """Every run of Unicode whitespace (non-breaking spaces included) -> " ".

  The prompt-tuning paper's MRQA conversion applies this to context,
  question and answers before T5's `pad_punctuation`.
  """
  return tf.strings.regex_replace(text, _UNICODE_SPACE, " ")


def join_collapsed(parts: Sequence[tf.Tensor]) -> tf.Tensor:
  """Joins scalar strings with a space and collapses whitespace runs."""
  joined = tf.strings.join(list(parts), separator=" ")
  return tf.strings.regex_replace(joined, r"\s+", " ")


def _escape_regex(text: tf.Tensor) -> tf.Tensor:
  """Escapes RE2 metacharacters so `text` matches literally."""
  return tf.strings.regex_replace(text, r"([\\.^$|?*+()\[\]{}])", r"\\\1")


def _escape_rewrite(text: tf.Tensor) -> tf.Tensor:
  """Escapes backslashes so `text` is literal in a regex replacement."""
  return tf.strings.regex_replace(text, r"\\", r"\\\\")


def _first_or_empty(strings: tf.Tensor) -> tf.Tensor:
  """strings[0] for a 1-D string tensor, or "" when it is empty."""
  padded = tf.concat([strings, tf.constant([""])], axis=0)
  return padded[0]


def _label_name(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """Maps a class id to its name; -1 (unlabelled test data) -> "<unk>"."""
  names = tf.constant(list(label_names) + ["<unk>"])
  label = tf.cast(label, tf.int32)
  in_range = tf.logical_and(label >= 0, label < len(label_names))
  return tf.gather(names, tf.where(in_range, label, len(label_names)))


# ============================ generic transforms ==============================
@seqio.map_over_dataset
@_plain
def remove_leading_word(x, key: str = "inputs"):
  """Drops the first space-delimited word of `x[key]` ("rte hypothesis: .."
  -> "hypothesis: .."): the "taskless" format of the prompt-tuning paper."""
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], r"^[^ ]* ", "",
                                    replace_global=False)
  return x


@seqio.map_over_dataset
@_plain
def text_to_text_classification(x,
                                benchmark_name: str,
                                label_names: Sequence[str],
                                feature_names: Optional[Sequence[str]] = None,
                                id_key: Optional[str] = "idx"):
  """T5's GLUE/SuperGLUE format: "<benchmark> key1: v1 key2: v2 ..." -> label.

  Example (QQP): {"question1": "Why?", "question2": "How?", "label": 1} ->
  {"inputs": "qqp question1: Why? question2: How?", "targets": "duplicate"}.

  Args:
    x: a raw example with a `label` class id (-1 for unlabelled test data).
    benchmark_name: the leading word (the task prefix).
    label_names: class names indexed by class id.
    feature_names: feature order; default: all keys except label/idx, sorted.
    id_key: the example id to keep under "idx" (None keeps none).

  Returns:
    {"inputs", "targets", "idx"} (MultiRC: "idx/paragraph", "idx/question",
    "idx/answer" instead of "idx").
  """
  keys = feature_names or sorted(set(x.keys()) - {"label", "idx"})
  parts = [tf.constant(benchmark_name)]
  for key in keys:
    parts += [tf.constant(f"{key}:"), x[key]]
  inputs = tf.strings.join(parts, separator=" ")
  ex = {}
  if benchmark_name == "multirc":
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    for part in ("paragraph", "question", "answer"):
      ex[f"idx/{part}"] = x["idx"][part]
  elif id_key:
    ex["idx"] = x[id_key]
  ex["inputs"] = inputs
  ex["targets"] = _label_name(x["label"], label_names)
  return ex


@seqio.map_over_dataset
@_plain
def stsb(x):
  """T5's STS-B format: "stsb sentence1: <s1> sentence2: <s2>" -> "3.4".

  The similarity label is rounded to the nearest multiple of 0.2 and written
  with one decimal (T5's `tf.as_string(round(label * 5) / 5, precision=1)`),
  turning STS-B into 26 classes of text; unlabelled test data (-1) -> "-1.0".
  """
  inputs = tf.strings.join(
      ["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]],
      separator=" ")
  label = tf.as_string(tf.round(x["label"] * 5) / 5, precision=1)
  return {"inputs": inputs, "targets": label, "idx": x["idx"]}


def add_index_token(dataset: tf.data.Dataset, output_features,
                    index: int) -> tf.data.Dataset:
  """Token step: puts task-index token `index` first in the inputs.

  The prompt-tuning code's `task_index_` tasks route multi-task prompts by
  this token: <extra_id_{index}>, i.e. id `vocab_size - 1 - index`, before
  the (taskless) inputs' tokens.
  """
  token = output_features["inputs"].vocabulary.vocab_size - 1 - index

  @_plain
  def add(x):
    x = dict(x)
    x["inputs"] = tf.concat(
        [tf.constant([token], x["inputs"].dtype), x["inputs"]], axis=0)
    return x

  return dataset.map(add, num_parallel_calls=AUTOTUNE)


# ================================= SuperGLUE ==================================
def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD as in T5: one example per answer (or one "<unk>" if none).

  "record query: <query> entities: e1, e2 passage: <passage>" -> answer; each
  output keeps "answers" (all answers) and "idx/passage", "idx/query" so the
  metric can de-duplicate and take the max over answers.
  """

  @_plain
  def one_per_answer(x):
    num = tf.size(x["answers"])
    copies = tf.maximum(num, 1)

    def repeat(t):
      return tf.broadcast_to(t, tf.concat([[copies], tf.shape(t)], axis=0))

    ex = {k: repeat(v) for k, v in x.items() if k != "idx"}
    ex["targets"] = tf.cond(num > 0, lambda: x["answers"],
                            lambda: tf.constant(["<unk>"]))
    ex["idx/passage"] = repeat(x["idx"]["passage"])
    ex["idx/query"] = repeat(x["idx"]["query"])
    return ex

  @_plain
  def format_text(x):
    passage = tf.strings.regex_replace(
        x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    inputs = tf.strings.join([
        "record query:", x["query"], "entities:",
        tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
        passage
    ], separator=" ")
    return {
        "idx/passage": x["idx/passage"],
        "idx/query": x["idx/query"],
        "inputs": inputs,
        "targets": x["targets"],
        "answers": x["answers"],
    }

  dataset = dataset.map(one_per_answer, num_parallel_calls=AUTOTUNE)
  dataset = dataset.unbatch()
  return dataset.map(format_text, num_parallel_calls=AUTOTUNE)


# Two WSC texts whose span2_index is off; T5 hard-codes their blanked form.
_WSC_SPECIAL_CASES = (
    ("The boy continued to whip the pony , and eventually the pony threw him "
     "over. John laughed out quite loud. \"Good for him,\" he said. ",
     "The boy continued to whip the pony , and eventually the pony threw him "
     "over. John laughed out quite loud. \"Good for X ,\" he said."),
    ("When they had eventually calmed down a bit , and had gotten home, Mr. "
     "Farley put the magic pebble in an iron safe . Some day they might want "
     "to use it , but really for now, what more could they wish for?",
     "When they had eventually calmed down a bit , and had gotten home, Mr. "
     "Farley put the magic pebble in an iron safe . Some day they might want "
     "to use X , but really for now, what more could they wish for?"),
)


def _wsc_blank_pronoun(x) -> tf.Tensor:
  """The WSC text with the pronoun (span2) replaced by "X"."""
  words = tf.strings.split(x["text"], sep=" ")
  i = tf.cast(x["span2_index"], tf.int32)
  blanked = tf.strings.join([
      tf.strings.reduce_join(words[:i], separator=" "), "X",
      tf.strings.reduce_join(words[i + 1:], separator=" ")
  ], separator=" ")
  for text, fixed in _WSC_SPECIAL_CASES:
    blanked = tf.where(tf.equal(x["text"], text), tf.constant(fixed), blanked)
  return blanked


def wsc_simple(dataset: tf.data.Dataset,
               label: str = "wsc:",
               correct_referent_only: bool = False) -> tf.data.Dataset:
  """T5's "simple" WSC: mark the pronoun, generate the referent.

  {"text": "Mitchell asked Tom if he could lend some money.", "span1_text":
  "Tom", "span2_index": 4, "span2_text": "he"} ->
  {"inputs": "wsc: Mitchell asked Tom if *he* could lend some money.",
   "targets": "Tom", "label": <1 if Tom is the referent>, "idx": ...}.

  Args:
    dataset: SuperGLUE `wsc.fixed` examples.
    label: the leading word.
    correct_referent_only: keep only examples whose candidate is the true
      referent (for training).

  Returns:
    the mapped dataset.
  """

  @_plain
  def fn(x):
    marked = tf.strings.regex_replace(
        _wsc_blank_pronoun(x), r" X ",
        tf.strings.join([" *", _escape_rewrite(x["span2_text"]), "* "]))
    return {
        "inputs": tf.strings.join([label, marked], separator=" "),
        "targets": tf.reshape(x["span1_text"], []),
        "label": x.get("label", tf.constant(0, tf.int64)),
        "idx": x["idx"],
    }

  if correct_referent_only:
    dataset = dataset.filter(_plain(
        lambda x: tf.cast(x.get("label", False), tf.bool)))
  return dataset.map(fn, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
@_plain
def definite_pronoun_resolution_simple(x, label: str = "wsc:"):
  """DPR in T5's simple WSC format ("wsc: Bob asked Tom if *he* can ..." ->
  the referent); used by T5's `super_glue_v102_proportional` mixture."""
  pattern = tf.strings.join([r" (", _escape_regex(x["pronoun"]), r")( |\.|,)"])
  sentence = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2",
                                      replace_global=False)
  candidates = tf.concat([x["candidates"], tf.constant([""])], axis=0)
  index = tf.cast(x["label"], tf.int32)
  in_range = tf.logical_and(index >= 0, index < tf.size(x["candidates"]))
  index = tf.where(in_range, index, tf.size(x["candidates"]))
  return {
      "inputs": tf.strings.join([label, sentence], separator=" "),
      "targets": candidates[index],
  }


# ==================================== QA ======================================
@seqio.map_over_dataset
@_plain
def squad(x, include_context: bool = True):
  """SQuAD as T5: "question: <q> context: <c>" -> first answer.

  Question, context and answers get T5's punctuation padding; all answers are
  kept under "answers" for the max-over-answers metric. Without the context
  (T5's `squad_v010_context_free`): "squad trivia question: <q>".
  """
  answers = pad_punctuation(x["answers"]["text"])
  question = pad_punctuation(x["question"])
  context = pad_punctuation(x["context"])
  if include_context:
    inputs = join_collapsed(["question:", question, "context:", context])
  else:
    inputs = join_collapsed(["squad trivia question:", question])
  return {
      "inputs": inputs,
      "targets": _first_or_empty(answers),
      "id": x["id"],
      "context": context,
      "question": question,
      "answers": answers,
  }


def _space_tokens(text: tf.Tensor) -> tf.Tensor:
  """T5's span tokenization: every non-word character (RE2 `\\W`, ASCII
  word characters only) -> " ", then split on single spaces (empty tokens
  kept, as `tf.strings.split(sep=" ")` keeps them)."""
  text = tf.strings.regex_replace(text, r"\W", " ")
  return tf.strings.split(input=[text], sep=" ").values


def _span_answer(context: tf.Tensor, answer: tf.Tensor) -> tf.Tensor:
  """"start: <i> end: <j>" of the answer's tokens in the context's, or "".

  T5's search: the first start position i in [0, len(context) - len(answer))
  (so never the very last possible position, as in T5) where the tokens match.
  """
  answer_tokens = _space_tokens(answer)
  context_tokens = _space_tokens(context)
  n = tf.size(answer_tokens)
  positions = tf.range(tf.maximum(tf.size(context_tokens) - n, 0))

  def matches(i):
    return tf.reduce_all(tf.equal(context_tokens[i:i + n], answer_tokens))

  hits = tf.map_fn(matches, positions, fn_output_signature=tf.bool)
  found = tf.where(hits)[:, 0]
  start = tf.cast(tf.concat([found, [-1]], axis=0)[0], tf.int32)
  end = start + n - 1
  text = tf.strings.format("start: {} end: {}", [start, end])
  return tf.where(tf.equal(start, -1), tf.constant(""), text)


def squad_span_space_tokenized(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """T5's `squad_v010_allanswers_span`: SQuAD inputs -> "start: i end: j".

  The target is the (inclusive) space-token span of the first answer in the
  context; examples whose answer is not found are dropped. "context" and
  "answers" are kept for `metrics.span_squad`.
  """

  @_plain
  def to_span(x):
    x = dict(x)
    x["targets"] = _span_answer(x["context"], x["targets"])
    return x

  dataset = squad(dataset)
  dataset = dataset.map(to_span, num_parallel_calls=AUTOTUNE)
  return dataset.filter(_plain(lambda x: tf.strings.length(x["targets"]) > 0))


@seqio.map_over_dataset
@_plain
def mrqa(x):
  """MRQA 2019 in the SQuAD format above, as the prompt-tuning paper did it.

  That paper's conversion (its `mrqa_to_tsv.py` + `preprocess_tsv_to_qa`)
  first turns every run of Unicode whitespace into one space (so a
  non-breaking space becomes a plain space), then applies T5's
  `pad_punctuation`. The target is the first answer span detected in the
  context, falling back to the first answer.
  """

  def clean(text):
    return pad_punctuation(normalize_unicode_whitespace(text))

  answers = clean(x["answers"])
  detected = clean(x["detected_answers"]["text"])
  question = clean(x["question"])
  context = clean(x["context"])
  return {
      "inputs": join_collapsed(["question:", question, "context:", context]),
      "targets": _first_or_empty(tf.concat([detected, answers], axis=0)),
      "id": x["qid"],
      "context": context,
      "question": question,
      "answers": answers,
  }


# ================================ generation ==================================
@seqio.map_over_dataset
@_plain
def summarize(x, article_key: str = "document", summary_key: str = "summary",
              prefix: str = "summarize:"):
  """T5's summarization format: "summarize: <article>" -> summary."""
  return {
      "inputs": tf.strings.join([prefix, x[article_key]], separator=" "),
      "targets": x[summary_key],
  }


def _table_columns(table):
  """Returns (headers, rows, contents) cut to a common length [n]."""
  n = tf.reduce_min(tf.stack([
      tf.size(table["column_header"]), tf.size(table["row_number"]),
      tf.size(table["content"])
  ]))
  return (table["column_header"][:n], table["row_number"][:n],
          table["content"][:n])


def linearize_table(table, triples: bool) -> tf.Tensor:
  """Flattens a TFDS table into the prefix-tuning paper's text form.

  Args:
    table: {"column_header": [n], "row_number": [n], "content": [n]}.
    triples: True for subject/predicate/object rows (WebNLG, DART): each row
      becomes "s : p : o"; False for one attribute per cell (E2E): each cell
      becomes "attribute : value".

  Returns:
    scalar string; rows (triples) or cells (E2E) joined by " | ".
  """
  headers, rows, contents = _table_columns(table)
  if not triples:
    cells = tf.strings.join([headers, contents], separator=" : ")
    return tf.strings.reduce_join(cells, separator=" | ")
  # Consecutive cells with the same row number form one triple.
  changed = tf.cast(tf.not_equal(rows[1:], rows[:-1]), tf.int64)
  row_ids = tf.concat([tf.zeros([tf.minimum(tf.size(rows), 1)], tf.int64),
                       tf.cumsum(changed)], axis=0)
  grouped = tf.RaggedTensor.from_value_rowids(contents, row_ids,
                                              validate=False)
  per_row = tf.strings.reduce_join(grouped, axis=1, separator=" : ")
  return tf.strings.reduce_join(per_row, separator=" | ")


@seqio.map_over_dataset
@_plain
def table_to_text(x, prefix: str, triples: bool):
  """"<prefix> <linearized table>" -> target sentence (E2E, WebNLG, DART).

  Example (E2E): table name=The Eagle, eatType=coffee shop ->
  "e2e_nlg: name : The Eagle | eatType : coffee shop".
  WebNLG examples also keep their DBpedia category under "category".
  """
  table = x["input_text"]["table"]
  ex = {
      "inputs": tf.strings.join([prefix, linearize_table(table, triples)],
                                separator=" "),
      "targets": x["target_text"],
  }
  if "context" in x["input_text"]:
    ex["category"] = x["input_text"]["context"]
  return ex
