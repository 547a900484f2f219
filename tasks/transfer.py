"""The prompt-tuning code's names for its transfer experiments, as aliases.

- `glue_<target>_from_<source>_v002` (QQP <-> MRPC): the target task's
  validation data in the target's own format; a prompt trained on the source
  task answers with the source's label words, which the postprocessor
  translates (the prompt-tuning code's plain text replacement: "duplicate" ->
  "equivalent" for MRPC from QQP, so "not_duplicate" -> "not_equivalent"; and
  back for QQP from MRPC) before the target's postprocessor and metrics. The
  mixture `glue_<target>_from_<source>_zeroshot_v002` trains on the source.
  (`glue_<target>_as_<source>_v*` in glue.py is the other recipe: the target's
  data rewritten with the source's prefix and labels.)
- `mrqa_{bioasq,drop,duorc,race,relation_extraction,textbookqa}_v001`: the
  paper's names of the six out-of-domain MRQA sets, here the same tasks as
  `mrqa_<tfds name>_v100` (the paper read TSV conversions of the same dev
  sets; the conversion is reproduced by `preprocessors.mrqa`).
- `squad_to_<name>` (both spellings) and `squad_to_mrqa`: train on SQuAD,
  evaluate on SQuAD validation and one / all six out-of-domain sets.
"""
from typing import Any

from tasks import glue
from tasks import postprocessors
from tasks import qa
from tasks import registry
from tasks import sources

# The paper's MRQA name -> the TFDS config name.
MRQA_V001 = {
    "bioasq": "bio_asq", "drop": "drop", "duorc": "duo_rc", "race": "race",
    "relation_extraction": "relation_extraction", "textbookqa": "textbook_qa",
}
# The positive label word whose replacement translates a prediction.
_PARAPHRASE_WORD = {"qqp": "duplicate", "mrpc": "equivalent"}
TRANSFERS = (("qqp", "mrpc"), ("mrpc", "qqp"))  # (source, target)


class TranslateLabels:
  """Postprocessor: replace `old` by `new` in the text, then `postprocess`.

  Picklable, applied to predictions and targets alike (targets are already
  in the target's words, so the replacement leaves them unchanged).
  """

  def __init__(self, old: str, new: str, postprocess):
    self.old, self.new, self.postprocess = old, new, postprocess

  def __call__(self, text: Any, example=None, is_target=False):
    text = postprocessors.as_text(text).replace(self.old, self.new)
    return self.postprocess(text, example=example, is_target=is_target)

  def __repr__(self):
    return f"TranslateLabels({self.old!r} -> {self.new!r}, {self.postprocess})"


def _register_glue_from() -> None:
  for source, target in TRANSFERS:
    name = f"glue_{target}_from_{source}_v002"
    registry.add_task(
        name,
        source=sources.TransformedTfdsDataSource(
            f"glue/{target}:1.0.0", splits={"validation": "validation"}),
        text_preprocessors=[glue.text_preprocessor(target)],
        metric_fns=glue.metric_fns(target),
        postprocess_fn=TranslateLabels(_PARAPHRASE_WORD[source],
                                       _PARAPHRASE_WORD[target],
                                       glue.postprocess_fn(target)),
        label_strings=glue.LABELS[source],  # What the source's prompt says.
        prefix=target)
    registry.add_mixture(f"glue_{target}_from_{source}_zeroshot_v002",
                         [f"glue_{source}_v002", name], default_rate=1.0)


def _register_mrqa_aliases() -> None:
  for alias, tfds_name in MRQA_V001.items():
    for twin in ("", registry.TASKLESS):
      registry.derive(f"{twin}mrqa_{tfds_name}_v100",
                      f"{twin}mrqa_{alias}_v001")
    for name in (alias, tfds_name):
      registry.add_mixture(f"squad_to_{name}",
                           ["squad_v010_allanswers",
                            f"mrqa_{tfds_name}_v100"], default_rate=1.0)
  registry.add_mixture(
      "squad_to_mrqa",
      ["squad_v010_allanswers"] +
      [f"mrqa_{n}_v100" for n in qa.OUT_OF_DOMAIN], default_rate=1.0)


def register() -> None:
  """Registers the transfer aliases (after glue.py and qa.py)."""
  _register_glue_from()
  _register_mrqa_aliases()
