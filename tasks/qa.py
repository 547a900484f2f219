"""SQuAD and the MRQA 2019 sets for the SQuAD -> out-of-domain table.

Format (T5's SQuAD; punctuation padded with spaces):
  "question: <q> context: <c>" -> the answer text
No task word leads the inputs, so each `taskless_` twin is the same task
under a second name (kept so gin files can use `taskless_` everywhere).

- `squad_v010_allanswers`: TFDS `squad/v1.1:3.0.0`; trains on the first
  answer, scores EM/F1 as the max over all reference answers.
- `mrqa_<name>_v100`: TFDS `mrqa/<name>:1.0.0`. In-domain sets (squad,
  news_qa, trivia_qa, search_qa, hotpot_qa, natural_questions) have train and
  validation splits. Out-of-domain sets (bio_asq, drop, duo_rc, race,
  relation_extraction, textbook_qa) exist only as TFDS `test` (the shared
  task's dev sets); they are served as both `validation` and `test`.
- `squad_to_mrqa_<name>_v100`: train on SQuAD, evaluate on SQuAD validation
  and on one out-of-domain set; `squad_to_mrqa_v100` evaluates on all six.
"""
import functools

from tasks import metrics
from tasks import postprocessors
from tasks import preprocessors as prep
from tasks import registry
from tasks import sources

IN_DOMAIN = ("squad", "news_qa", "trivia_qa", "search_qa", "hotpot_qa",
             "natural_questions")
OUT_OF_DOMAIN = ("bio_asq", "drop", "duo_rc", "race", "relation_extraction",
                 "textbook_qa")


def _squad_source():
  return sources.TransformedTfdsDataSource(
      "squad/v1.1:3.0.0", splits={"train": "train", "validation": "validation"})


def register() -> None:
  """Registers SQuAD, the MRQA tasks and the transfer mixtures."""
  # squad_v010 is T5's deprecated name for the same task (T5 registers it
  # without the qa postprocessor, which scores the first answer's characters
  # as the answer list; here it scores like squad_v010_allanswers).
  for name in ("squad_v010_allanswers", "squad_v010"):
    registry.add_task(
        name,
        source=_squad_source(),
        text_preprocessors=[prep.squad],
        metric_fns=(metrics.squad,),
        postprocess_fn=postprocessors.qa)
  registry.add_task(
      "squad_v010_allanswers_span",
      source=_squad_source(),
      text_preprocessors=[prep.squad_span_space_tokenized],
      metric_fns=(metrics.span_squad,),
      postprocess_fn=postprocessors.span_qa)
  registry.add_task(
      "squad_v010_context_free",
      source=_squad_source(),
      text_preprocessors=[
          functools.partial(prep.squad, include_context=False)],
      metric_fns=(metrics.squad,),
      postprocess_fn=postprocessors.qa,
      prefix="squad")

  for name in IN_DOMAIN + OUT_OF_DOMAIN:
    if name in IN_DOMAIN:
      splits = {"train": "train", "validation": "validation"}
    else:
      splits = {"validation": "test", "test": "test"}
    registry.add_task(
        f"mrqa_{name}_v100",
        source=sources.TransformedTfdsDataSource(f"mrqa/{name}:1.0.0",
                                                 splits=splits),
        text_preprocessors=[prep.mrqa],
        metric_fns=(metrics.squad,),
        postprocess_fn=postprocessors.qa)

  for name in OUT_OF_DOMAIN:
    registry.add_mixture(f"squad_to_mrqa_{name}_v100",
                         ["squad_v010_allanswers", f"mrqa_{name}_v100"],
                         default_rate=1.0)
  registry.add_mixture(
      "squad_to_mrqa_v100",
      ["squad_v010_allanswers"] + [f"mrqa_{n}_v100" for n in OUT_OF_DOMAIN],
      default_rate=1.0)
