"""seqio tasks and mixtures for prompt tuning; `import tasks` registers them.

Task names follow T5 (`super_glue_rte_v102`, `glue_sst2_v200`,
`squad_v010_allanswers`, ...), each with a `taskless_` twin whose inputs drop
the leading task word. See docs/TASKS.md for the full table, and
`python -m tasks.list` for what is registered.

Public API:
  get_label_strings(name) -> Optional[List[str]]
  get_task_prefix(name) -> Optional[str];  TASK_PREFIXES: {task: prefix}
  vocabulary_path() / get_vocabulary() / task_vocabulary(name)
  local.register_local_task(name, train=, validation=, test=, labels=)
  register_all(): (re-)register everything (e.g. after a registry reset).
"""
# pylint: disable=g-bad-import-order
from tasks import vocab
from tasks import labels
from tasks import metrics
from tasks import text_metrics
from tasks import postprocessors
from tasks import preprocessors
from tasks import registry
from tasks import sources
from tasks import glue
from tasks import super_glue
from tasks import qa
from tasks import generation
from tasks import mixtures
from tasks import transfer
from tasks import examples
from tasks import variants
from tasks import local
from tasks import tiny  # bundled demo tasks (owned by the demo work)
from tasks import tiny_shift  # domain-shifted tiny tasks (research workflows)
from tasks import table_to_text  # decoder-only (GPT-2) formats of E2E/WebNLG/DART
from tasks import gsm8k
from tasks import code  # MBPP-format code tasks, pass@1 through tasks.sandbox
from tasks import hf_vocab  # tasks re-tokenized with a Hugging Face tokenizer

from tasks.labels import TASK_PREFIXES
from tasks.labels import get_label_strings
from tasks.labels import get_task_prefix
from tasks.labels import register_labels
from tasks.local import LocalDataError
from tasks.local import register_local_task
from tasks.vocab import get_vocabulary
from tasks.vocab import task_vocabulary
from tasks.vocab import vocabulary_path


def register_all() -> None:
  """Registers every built-in task and mixture (replacing same names)."""
  glue.register()
  super_glue.register()
  qa.register()
  generation.register()
  mixtures.register()
  transfer.register()
  tiny.register()
  table_to_text.register()
  gsm8k.register()
  code.register()
  variants.register()  # After every base task: task_index_, _examples, mt5_.


register_all()
