"""The prompt-tuning code's task variants: `task_index_`, `_examples`, `mt5_`.

- `task_index_<task>`: the taskless inputs with one task-index token first
  (<extra_id_k>, id `vocab_size - 1 - k`), for routing multi-task prompts.
  k is the task's position in the sorted benchmark config names: GLUE cola 0,
  mnli 1 (also mnli_matched, mnli_mismatched, ax), mrpc 2, qnli 3, qqp 4,
  rte 5, sst2 6, stsb 7, wnli 8; SuperGLUE boolq 0, cb 1, copa 2, multirc 3,
  record 4, rte 5 (also axb, axg), wic 6, wsc 7 (also DPR).
- `<task>_examples` (and `taskless_`, `task_index_` ones): the same task,
  marked to write decoded examples to TensorBoard (see examples.py).
- `mt5_<name>`: every task and mixture of this package with the mT5
  vocabulary (vocab.MT5_VOCABULARY, resolved lazily when first used).
"""
import functools
from typing import Iterator, Optional, Tuple

import seqio

from tasks import examples as examples_lib
from tasks import glue
from tasks import preprocessors as prep
from tasks import qa
from tasks import registry
from tasks import super_glue
from tasks import transfer
from tasks import vocab

TASK_INDEX = "task_index_"
MT5 = "mt5_"


def _index(names, aliases):
  index = {name: i for i, name in enumerate(sorted(names))}
  index.update({alias: index[name] for alias, name in aliases.items()})
  return index


GLUE_INDEX = _index(
    ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"),
    {"ax": "mnli", "mnli_matched": "mnli", "mnli_mismatched": "mnli"})
SUPER_GLUE_INDEX = _index(
    ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"),
    {"axb": "rte", "axg": "rte", "dpr": "wsc"})
SUPER_GLUE_NAMES = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic",
                    "axb", "axg")

# The prompt-tuning code's multi-task SuperGLUE mixtures of task-index tasks.
_SG_RATES = {
    "task_index_super_glue_wsc_v102_simple_train": 259.,
    "task_index_super_glue_wsc_v102_simple_eval_examples": 0.,
    "task_index_super_glue_boolq_v102_examples": 9_427.,
    "task_index_super_glue_cb_v102_examples": 250.,
    "task_index_super_glue_copa_v102_examples": 400.,
    "task_index_super_glue_multirc_v102_examples": 27_243.,
    "task_index_super_glue_record_v102_examples": 138_854.,
    "task_index_super_glue_rte_v102_examples": 2_490.,
    "task_index_super_glue_wic_v102_examples": 5_428.,
}


def families() -> Iterator[Tuple[str, Optional[int], str, bool]]:
  """(task name, task index or None, examples title, is QA) of the tasks
  that get `_examples` and (with an index) `task_index_` twins."""
  for suffix in glue.VERSIONS.values():
    for config in glue.CONFIGS:
      yield f"glue_{config}_{suffix}", GLUE_INDEX[config], config, False
  for source, target in transfer.TRANSFERS:
    yield (f"glue_{target}_from_{source}_v002", GLUE_INDEX[target], target,
           False)
  for name in SUPER_GLUE_NAMES:
    yield f"super_glue_{name}_v102", SUPER_GLUE_INDEX[name], name, False
  for split in ("train", "eval"):
    yield (f"super_glue_wsc_v102_simple_{split}", SUPER_GLUE_INDEX["wsc"],
           "wsc", False)
  yield "dpr_v001_simple", SUPER_GLUE_INDEX["dpr"], "dpr", False
  yield "squad_v010_allanswers", None, "squad", True
  for name in qa.IN_DOMAIN + qa.OUT_OF_DOMAIN:
    yield f"mrqa_{name}_v100", None, name, True
  for alias in transfer.MRQA_V001:
    yield f"mrqa_{alias}_v001", None, alias, True


def _examples_twin(name: str, title: str, is_qa: bool) -> None:
  task = registry.derive(name, name + examples_lib.SUFFIX)
  examples_lib.mark(task, examples_lib.ExamplesSpec(title=title, qa=is_qa))


def _register_task_variants() -> None:
  for name, index, title, is_qa in families():
    taskless = registry.TASKLESS + name
    for twin in (name, taskless):
      _examples_twin(twin, title, is_qa)
    if index is None:
      continue
    indexed = TASK_INDEX + name
    registry.derive(
        taskless, indexed,
        token_steps=[functools.partial(prep.add_index_token, index=index)],
        prefix=None)
    _examples_twin(indexed, title, is_qa)


def _mixture(name, members, **kwargs):
  registry.add_mixture(name, members, taskless=False, **kwargs)


def _register_mixtures() -> None:
  sfx = examples_lib.SUFFIX
  for twin in ("", registry.TASKLESS, TASK_INDEX):
    for suffix in glue.VERSIONS.values():
      for end in ("", sfx):
        name = f"{twin}glue_mnli_and_dev_{suffix}{end}"
        if not registry.is_ours(name):
          _mixture(name, [f"{twin}glue_{m}_{suffix}{end}" for m in (
              "mnli", "mnli_mismatched", "mnli_matched")], default_rate=1.0)
    for end in ("", sfx):
      name = f"{twin}super_glue_wsc_and_dev_v102_simple{end}"
      if not registry.is_ours(name):
        # Training reads the train task, which needs no examples twin.
        _mixture(name, [f"{twin}super_glue_wsc_v102_simple_train",
                        f"{twin}super_glue_wsc_v102_simple_eval{end}"],
                 default_rate=1.0)
      for source, target in transfer.TRANSFERS:
        name = f"{twin}glue_{target}_from_{source}_zeroshot_v002{end}"
        if not registry.is_ours(name):
          _mixture(name, [f"{twin}glue_{source}_v002",
                          f"{twin}glue_{target}_from_{source}_v002{end}"],
                   default_rate=1.0)
  _mixture("task_index_super_glue_v102_examples_proportional",
           list(_SG_RATES.items()))
  _mixture("task_index_super_glue_with_dpr_v102_examples_proportional",
           [("task_index_dpr_v001_simple_examples", 1_322.)] +
           list(_SG_RATES.items()))
  # QA transfer, with examples (the prompt-tuning code's names).
  squad = "squad_v010_allanswers_examples"
  for alias, tfds_name in transfer.MRQA_V001.items():
    _mixture(f"squad_to_{alias}_examples",
             [squad, f"mrqa_{alias}_v001_examples"], default_rate=1.0)
    _mixture(f"squad_to_{tfds_name}_examples",
             [squad, f"mrqa_{tfds_name}_v100_examples"], default_rate=1.0)
  _mixture("squad_to_mrqa_examples",
           [squad] + [f"mrqa_{n}_v100_examples" for n in qa.OUT_OF_DOMAIN],
           default_rate=1.0)


def _uses_t5_vocabulary(provider) -> bool:
  features = provider.output_features
  return all(f.vocabulary is vocab.VOCABULARY for f in features.values())


def _register_mt5() -> None:
  """`mt5_` twins of every task and mixture this package registered."""
  task_names = [n for n in seqio.TaskRegistry.names()
                if registry.is_ours(n) and not n.startswith(MT5)
                and _uses_t5_vocabulary(seqio.TaskRegistry.get(n))]
  for name in task_names:
    task = seqio.TaskRegistry.get(name)
    if "_sentinel" in name:
      continue  # Re-derived below from the mT5 base (its postprocessor
      # strips the mT5 vocabulary's sentinel).
    new = registry.derive(name, MT5 + name,
                          output_features=vocab.MT5_OUTPUT_FEATURES)
    spec = getattr(task, examples_lib.ATTRIBUTE, None)
    if spec is not None:
      examples_lib.mark(new, spec)
  for name in super_glue.PROPORTIONAL_RATES:
    registry.add_sentinel_twin(MT5 + name)
  for name in list(seqio.MixtureRegistry.names()):
    if not registry.is_ours(name) or name.startswith(MT5):
      continue
    mixture = seqio.MixtureRegistry.get(name)
    members = [(MT5 + t.name, mixture.get_rate(t)) for t in mixture.tasks]
    if all(m in seqio.TaskRegistry.names() for m, _ in members):
      _mixture(MT5 + name, members)


def register() -> None:
  """Registers the variants (after every base task and mixture)."""
  _register_task_variants()
  _register_mixtures()
  _register_mt5()
