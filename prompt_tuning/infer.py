r"""Serve trained prompts from one frozen T5: `python -m prompt_tuning.infer`.

Three prompts in one batch, JSONL in and out (see docs/INFERENCE.md):

  python -m prompt_tuning.infer \
    --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_infer.gin \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://…/t5_1_1_lm100k_base/checkpoint_1100000'" \
    --gin.PROMPT_FILES="{'rte': 'rte.npy', 'mrpc': 'mrpc.npy', 'sst2': '/runs/sst2'}" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
    --input_file=requests.jsonl --output_file=predictions.jsonl

Input lines are `{"prompt": "rte", "inputs": "…"}` (`prompt` optional with one
prompt); output line i answers input line i: `{"prompt", "inputs", "prediction"}`
(+ `"scores"` per label when ranking, `"votes"` for ensembles), or
`{"line": i, "error": "…"}` for a line that cannot be served. Without an input
file, the examples of MIXTURE_OR_TASK_NAME's INFER_SPLIT are served.

Prompt sources (each `name: path`): a `.npy` `[P, H]` file, a training MODEL_DIR
(its `best/` export, or INFER_CHECKPOINT = 'latest' / a step), or any directory
holding `encoder.prompt.prompt.npy`; prefix-tuning and LoPA MODEL_DIRs join the
same batches (`methods/prefix_bank.py`, `methods/lopa_bank.py`). MODEL_DIR and
PROMPT_FILE (as for
prompt_tuning.eval) add one prompt each. A MODEL_DIR also supplies the frozen
checkpoint and model config it was trained with, unless given. ADAPTER (a PEFT
LoRA / IA3 adapter directory) is merged into the frozen weights at load.

Exit status: 0 when the run completes (bad lines are error records), 1 for fatal
problems (missing files, unusable prompts or checkpoints, bad settings), with a
one-line message.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys
import time
import types
from typing import (Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple,
                    Union)

import gin
import jax
import numpy as np
from absl import flags

from prompt_tuning import cli, configurables, building, fingerprint, gin_specs
from prompt_tuning import prompt_files
from prompt_tuning.tiny import assets
from prompt_tuning.checkpoints import peft_adapters
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import layout, summaries
from prompt_tuning.inference import io as infer_io, serving
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import ia3 as ia3_lib
from prompt_tuning.methods import lora as lora_lib
from prompt_tuning.methods import lopa as lopa_lib
from prompt_tuning.methods import lopa_bank as lopa_bank_lib
from prompt_tuning.methods import multitask
from prompt_tuning.methods import prefix_bank as prefix_bank_lib
from prompt_tuning.methods.base import Method
from prompt_tuning.prompt_files import check_prompt_file
from prompt_tuning.models import families, scan
from prompt_tuning.params import flatten, with_params
from prompt_tuning.models.config import T5Config

FLAGS = flags.FLAGS
flags.DEFINE_string("input_file", None, "JSONL requests ('-' = stdin); same as "
                    "--gin.INFER_INPUT.")
flags.DEFINE_string("output_file", None, "Where to write JSONL predictions ('-' = "
                    "stdout); same as --gin.INFER_OUTPUT.")
flags.DEFINE_multi_string("prompt", [], "NAME=PATH of a prompt to serve (a .npy "
                          "file or a MODEL_DIR); repeatable; adds to PROMPT_FILES.")

INFER_MACROS = ("TASK_FEATURE_LENGTHS",)
SERVED_METHODS = (None, "prompt", "prefix", "lopa", multitask.NAME)
Labels = Union[None, str, Sequence[str], Mapping[str, Union[str, Sequence[str]]]]


class InferError(UserError):
  """A fatal problem with the settings or files (exit status 1, no traceback)."""


# ------------------------------------------------------------------------------------
# Prompt sources → a prompt bank on the frozen model.
# ------------------------------------------------------------------------------------


def served_record(source: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
  """`config.json` of a training MODEL_DIR source (None for plain files); refuses
  runs of other methods than prompt tuning."""
  path = pathlib.Path(source)
  if not (path.is_dir() and (path / layout.CONFIG_JSON).is_file()):
    return None
  record = layout.read_record(path)
  if record.get("method") not in SERVED_METHODS:
    raise InferError(f"{path} was trained with method {record.get('method')!r}; "
                     "prompt_tuning.infer serves prompt-tuning prompts, prefix-"
                     "tuning prefixes and LoPA runs (one mixed bank). Evaluate other "
                     "methods with prompt_tuning.eval.")
  return record


def frozen_model_source(records: Mapping[str, Dict[str, Any]],
                        initial_checkpoint_path: Optional[str],
                        model_config: Optional[T5Config]
                        ) -> Tuple[Optional[str], Optional[T5Config]]:
  """The frozen checkpoint and config: given ones win, else the MODEL_DIRs' own."""
  for model_dir, record in records.items():
    trained_on = record.get("initial_checkpoint_path")
    if initial_checkpoint_path is not None and not assets.same_model_path(
        trained_on, initial_checkpoint_path):
      logging.warning("%s was trained on the frozen model %s, but "
                      "INITIAL_CHECKPOINT_PATH is %s.", model_dir, trained_on,
                      initial_checkpoint_path)
  if initial_checkpoint_path is None and records:
    paths = {assets.locate(r.get("initial_checkpoint_path")) for r in records.values()}
    if len(paths) > 1:
      raise InferError(f"The MODEL_DIRs {list(records)} were trained on different "
                       f"frozen checkpoints {sorted(map(str, paths))}; one run serves "
                       "one frozen model. Set --gin.INITIAL_CHECKPOINT_PATH.")
    initial_checkpoint_path = paths.pop()
  if model_config is None and records:
    model_config = families.config_from_dict(
        next(iter(records.values()))["model_config"])
  # Served unscanned (cached decoding); exports do not depend on scan_layers.
  return initial_checkpoint_path, scan.unscanned(model_config)


def prompt_combine(records: Mapping[str, Dict[str, Any]],
                   combine: Optional[str]) -> str:
  """The bank's combination: `combine` if given, else the MODEL_DIRs' own."""
  recorded = {d: r.get("prompt_combine") or "prefix" for d, r in records.items()}
  if combine is None:
    modes = set(recorded.values())
    if len(modes) > 1:
      raise InferError(f"The served MODEL_DIRs place their prompts differently "
                       f"({recorded}); one bank uses one combination. Serve them "
                       "separately, or force one with --gin.infer.combine.")
    return modes.pop() if modes else "prefix"
  for model_dir, mode in recorded.items():
    if mode != combine:
      logging.warning("%s was trained with its prompt combined %r but is served "
                      "%r (infer.combine).", model_dir, mode, combine)
  return combine


def merge_adapter(params: Dict[str, Any], config: T5Config,
                  adapter: Union[str, os.PathLike]) -> Dict[str, Any]:
  """The frozen parameters with a PEFT LoRA or IA3 adapter merged into the kernels.

  The adapter directory is self-describing (rank, alpha, targets), so the served
  model is exactly the adapted one, with no per-request cost.
  """
  try:
    peft_type = peft_adapters.read_adapter_config(adapter).get("peft_type")
    if peft_type == "LORA":
      factors, settings = peft_adapters.load_lora(adapter, config)
    elif peft_type == "IA3":
      factors, settings = peft_adapters.load_ia3(adapter, config)
    else:
      raise InferError(f"ADAPTER {adapter}: peft_type {peft_type!r}; infer merges LORA "
                       "and IA3 adapters (serve prompt-tuning adapters as prompts).")
  except peft_adapters.PeftAdapterError as e:
    raise InferError(f"ADAPTER: {e}") from e
  flat = flatten(params)
  is_input = ia3_lib.Ia3Hook(input_targets=settings.get("input_targets", ())).is_input_target
  for path, value in factors.items():
    module, name = path.rsplit("/", 1)
    rows, cols = np.shape(flat[f"{module}/kernel"])
    need = {"lora_a": (rows, settings.get("rank")), "lora_b": (settings.get("rank"), cols),
            "ia3_scale": (rows,) if is_input(module) else (cols,)}[name]
    if tuple(value.shape) != need:
      raise InferError(f"ADAPTER {adapter}: {path} has shape {tuple(value.shape)}, but "
                       f"the frozen kernel [{rows}, {cols}] needs {need} (an adapter of "
                       "another model size?).")
  adapted = with_params(params, factors)
  if peft_type == "LORA":
    merged = lora_lib.merge(adapted, settings["alpha"] / settings["rank"])
  else:
    merged = ia3_lib.merge(adapted, settings["input_targets"])
  logging.info("Merged the %s adapter %s into %d frozen kernels.", peft_type, adapter,
               len({p.rsplit("/", 1)[0] for p in factors}))
  return merged


def load_bank_model(prompts: Mapping[str, Union[str, os.PathLike, np.ndarray]],
                    model_config: Optional[T5Config],
                    initial_checkpoint_path: Optional[str], *, mesh=None,
                    checkpoint: Union[str, int] = "best", seed: int = 0,
                    combine: Optional[str] = None,
                    adapter: Optional[Union[str, os.PathLike]] = None,
                    vocabulary: Any = None, allow_model_mismatch: bool = False):
  """Frozen T5 + a bank of the named prompts.

  Args:
    prompts: name → `.npy` path, MODEL_DIR or other directory, or `[P, H]` array.
    model_config: MODEL_CONFIG; None takes the checkpoint's (or a MODEL_DIR's).
    initial_checkpoint_path: the frozen model (any format `checkpoints.load`
      reads); None takes a MODEL_DIR's, else the model is randomly initialized.
    mesh: place parameters on it.
    checkpoint: which export of a MODEL_DIR ('best', 'latest' or a step).
    seed: initializes the frozen model when there is no checkpoint (tests).
    combine: where the prompts go; None takes the MODEL_DIRs' recorded mode,
      else 'prefix'.
    adapter: a PEFT LoRA or IA3 adapter directory merged into the frozen kernels
      (`merge_adapter`); None: the frozen model as loaded.
    vocabulary: the served vocabulary, part of the model fingerprint every
      prompt file is checked against (`prompt_tuning.fingerprint`).
    allow_model_mismatch: serve prompts trained on another frozen model (logged).

  Returns:
    (model, params, bank, description of the frozen model).
  """
  if not prompts:
    raise InferError("No prompts to serve: set --gin.PROMPT_FILES=\"{'name': "
                     "'/path/prompt.npy'}\", --prompt=NAME=PATH, PROMPT_FILE or "
                     "MODEL_DIR.")
  records, sources, prefix_sources, lopa_sources, bank_files = {}, {}, {}, {}, {}
  for name, source in prompts.items():
    if isinstance(source, (str, os.PathLike)):
      record = served_record(source)
      if record is not None:
        records[str(source)] = record
      if record is not None and record.get("method") == "prefix":
        prefix_sources[name] = layout.export_dir(str(source), checkpoint)
      elif record is not None and record.get("method") == "lopa":
        lopa_sources[name] = (layout.export_dir(str(source), checkpoint),
                              lopa_entry(source, record))
      elif record is not None and record.get("method") == multitask.NAME:
        rows, bank_files[name] = multitask_rows(source, record, checkpoint)
        for task, row in rows.items():
          if task in sources or task in prompts:
            raise InferError(f"Prompt name {task!r} is served twice: a task of the "
                             f"multi-task run {source} and another source; serve "
                             "them in separate runs.")
          sources[task] = row
      else:
        sources[name] = prompt_files.prompt_path(source, checkpoint)
    else:
      sources[name] = source
  if prefix_sources or lopa_sources:
    if adapter is not None:
      dirs = [str(d) for d in prefix_sources.values()]
      dirs += [str(d) for d, _ in lopa_sources.values()]
      raise InferError("--gin.ADAPTER cannot be combined with prefix-tuning or LoPA "
                       f"MODEL_DIRs ({', '.join(dirs)}) yet; serve the adapter with "
                       "plain prompts only.")
    return _load_mixed_model(sources, prefix_sources, lopa_sources, records,
                             model_config,
                             initial_checkpoint_path, mesh=mesh, seed=seed,
                             combine=combine, vocabulary=vocabulary,
                             allow_model_mismatch=allow_model_mismatch)
  initial_checkpoint_path, model_config = frozen_model_source(
      records, initial_checkpoint_path, model_config)
  if model_config is None and not initial_checkpoint_path:
    raise InferError("No frozen model: set --gin.INITIAL_CHECKPOINT_PATH (T5X, "
                     "Hugging Face or native checkpoint) or serve a MODEL_DIR.")
  if not initial_checkpoint_path:
    logging.warning("No INITIAL_CHECKPOINT_PATH: the frozen model is RANDOMLY "
                    "initialized (only useful for tests).")
  _check_prompt_files(sources, model_config)  # before any frozen weight is read
  loaded = {name: prompt_files.load_prompt(source) for name, source in sources.items()}
  bank, bank_params = bank_lib.from_prompts(loaded, prompt_combine(records, combine))
  method = bank_lib.bank_method(bank)
  config, params, _ = building.build_params(
      method, model_config, initial_checkpoint_path, jax.random.PRNGKey(seed),
      mesh=mesh, run_initializer=False)
  if adapter is not None:
    shardings = jax.tree_util.tree_map(lambda x: getattr(x, "sharding", None), params)
    params = merge_adapter(params, config, adapter)
    if mesh is not None:
      params = building.place(params, shardings)
  width = bank_params["prompts"].shape[-1]
  if width != config.emb_dim:  # the checkpoint decided the width: name the files
    _check_prompt_files(sources, config)
    raise InferError(f"The prompts have width H={width} but the frozen model has "
                     f"emb_dim {config.emb_dim} ({initial_checkpoint_path or 'random'}"
                     "); serve prompts trained on this model size.")
  current = fingerprint.of_params(
      params, vocabulary, fingerprint.placement(method),
      name=initial_checkpoint_path or "a randomly initialized model",
      embedding_path=families.embedding_path(config))
  checked = {**{n: s for n, s in sources.items() if not isinstance(s, np.ndarray)},
             **bank_files}
  for name, source in checked.items():
    try:
      prompt_files.check_model(source, current, allow=allow_model_mismatch)
    except fingerprint.PromptModelMismatch as e:
      raise InferError(f"Prompt {name!r}: {e}") from e
  prompts_path = f"{families.prompt_scope(config)}/prompts"  # encoder/, model/, …
  params = building.apply_exported(
      params, {prompts_path.replace("/", "."): np.asarray(
          bank_params["prompts"])}, "the prompt bank")
  for name in bank.names:
    logging.info("Serving prompt %r [%d, %d] from %s.", name,
                 bank.lengths[bank.index(name)], width,
                 sources[name] if isinstance(sources[name], (str, os.PathLike))
                 else "an array")
  return method.build(config), params, bank, str(initial_checkpoint_path or "random")


def multitask_rows(model_dir: Union[str, os.PathLike], record: Mapping[str, Any],
                   checkpoint: Union[str, int] = "best"
                   ) -> Tuple[Dict[str, np.ndarray], pathlib.Path]:
  """A multi-task run's exported bank as one `[P, H]` prompt per task, named by
  task (config.json's `prompt_names`), and the bank's `.npy` file."""
  directory = layout.export_dir(model_dir, checkpoint)
  path = directory / f"{multitask.EXPORT_NAME}.npy"
  names = record.get("prompt_names")
  if not path.is_file() or not names:
    raise InferError(f"{model_dir} is a multi-task prompt run but {path} (the "
                     "trained bank) or config.json's prompt_names is missing; was "
                     "it written by prompt_tuning.train?")
  bank = np.load(path, allow_pickle=False)
  if bank.ndim != 3 or bank.shape[0] != len(names):
    raise InferError(f"{path} has shape {list(bank.shape)}, but the run has "
                     f"{len(names)} tasks {names}: expected [K, P, H].")
  return {task: bank[k] for k, task in enumerate(names)}, path


def _check_prompt_files(sources: Mapping[str, Any],
                        model_config: Optional[T5Config]) -> None:
  """Every `.npy` source: [P, H] with H the model width (when known), float, finite."""
  width = getattr(model_config, "emb_dim", None)
  for source in sources.values():
    if isinstance(source, (str, os.PathLike)) and pathlib.Path(source).is_file():
      check_prompt_file(source, None, width)


def lopa_entry(source, record: Mapping[str, Any]) -> lopa_bank_lib.LopaEntry:
  """The LoPA settings of a served run, rebuilt from its recorded method spec."""
  spec = record.get("method_spec")
  if not spec:
    raise InferError(f"{source} is a LoPA run whose config.json records no "
                     "method_spec (its rank, hidden width, features and variant); "
                     "retrain it with this version, or evaluate it with "
                     "prompt_tuning.eval --gin.METHOD=...")
  try:
    method = gin_specs.rebuild_method(spec)
  except (ValueError, TypeError) as e:
    raise InferError(f"{source}: cannot rebuild its LoPA method from config.json: "
                     f"{e}") from e
  if not isinstance(method.prompt, lopa_lib.LopaPrompt):
    raise InferError(f"{source} records method 'lopa' but its method_spec builds "
                     f"{type(method.prompt).__name__}; the config.json is damaged.")
  return lopa_bank_lib.LopaEntry.of(method.prompt)


def _load_mixed_model(sources, prefix_sources, lopa_sources, records, model_config,
                      initial_checkpoint_path, *, mesh, seed, combine, vocabulary,
                      allow_model_mismatch):
  """`load_bank_model` when some sources are prefix-tuning or LoPA MODEL_DIRs: plain
  prompts, folded prefixes and LoPA entries share one index
  (`methods/lopa_bank.mixed_banks`)."""
  initial_checkpoint_path, model_config = frozen_model_source(
      records, initial_checkpoint_path, model_config)
  if model_config is None and not initial_checkpoint_path:
    raise InferError("No frozen model: set --gin.INITIAL_CHECKPOINT_PATH (T5X, "
                     "Hugging Face or native checkpoint) or serve a MODEL_DIR.")
  config, params, _ = building.build_params(
      Method(name="frozen"), model_config, initial_checkpoint_path,
      jax.random.PRNGKey(seed), mesh=mesh, run_initializer=False)
  name = initial_checkpoint_path or "a randomly initialized model"
  prompts = {}
  for entry, source in sources.items():
    prompts[entry] = np.asarray(prompt_files.load_prompt(source), np.float32)
    if prompts[entry].shape[-1] != config.emb_dim:
      raise InferError(f"Prompt {entry!r} has width H={prompts[entry].shape[-1]} but "
                       f"the frozen model has emb_dim {config.emb_dim}.")
  combine = prompt_combine(
      {d: r for d, r in records.items() if r.get("method") != "prefix"}, combine)
  checks = [(e, s, f"prompt/{combine}")
            for e, s in sources.items() if not isinstance(s, np.ndarray)]
  checks += [(e, s, "prefix") for e, s in prefix_sources.items()]
  checks += [(e, s, f"lopa/{combine}") for e, (s, _) in lopa_sources.items()]
  for entry, source, placement in checks:
    current = fingerprint.of_params(params, vocabulary, placement, name=name,
                                    embedding_path=families.embedding_path(config))
    try:
      prompt_files.check_model(source, current, allow=allow_model_mismatch)
    except fingerprint.PromptModelMismatch as e:
      raise InferError(f"Prompt {entry!r}: {e}") from e
  try:
    if lopa_sources:
      prompt_bank, prefix_bank, params = lopa_bank_lib.mixed_banks(
          params, config, prompts,
          {e: layout.read_arrays(d) for e, d in prefix_sources.items()},
          {e: (entry, layout.read_arrays(d))
           for e, (d, entry) in lopa_sources.items()}, combine)
    else:
      prompt_bank, prefix_bank, params = prefix_bank_lib.mixed_banks(
          params, config, prompts,
          {e: layout.read_arrays(d) for e, d in prefix_sources.items()}, combine)
  except ValueError as e:
    raise InferError(str(e)) from e
  for entry in prompt_bank.names:
    origin = lopa_sources[entry][0] if entry in lopa_sources else None
    logging.info("Serving %r from %s.", entry, origin or prefix_sources.get(
        entry, sources.get(entry, "an array")))
  model = Method(name="bank", prompt=prompt_bank, prefix=prefix_bank).build(config)
  return model, params, prompt_bank, str(name)


def resolve_labels(labels: Labels, task_labels: Callable[[str], Optional[Sequence[str]]]
                   ) -> serving.LabelSpec:
  """LABELS: a list, a task name (its label strings), or name → list / task name."""
  def one(value, where):
    if isinstance(value, str):
      strings = task_labels(value)
      if not strings:
        raise InferError(f"LABELS{where} = {value!r}: that task has no label strings "
                         "(a generation task?); give the labels as a list.")
      return list(strings)
    return value

  if labels is None:
    return None
  if isinstance(labels, Mapping):
    return {name: one(value, f"[{name!r}]") for name, value in labels.items()}
  return one(labels, "")


# ------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass
class InferSummary:
  lines: int
  predictions: int
  errors: int
  truncated: int
  batches: int
  seconds: float
  output: str


def _prompt_sources(prompt_files: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """PROMPT_FILES + MODEL_DIR + PROMPT_FILE macros (names from the path)."""
  sources = dict(prompt_files or {})
  for macro in ("MODEL_DIR", "PROMPT_FILE"):
    value = cli.macro(macro)
    if value is gin.REQUIRED or repr(value) == "%gin.REQUIRED":
      raise InferError(f"{macro} is required by a gin file but not set: add "
                       f"{cli.EXAMPLES.get(macro, f'--gin.{macro}=...')}.")
    if value and not isinstance(value, gin.config.ConfigurableReference):
      path = pathlib.Path(value)
      name = path.name if path.is_dir() or not path.suffix else path.stem
      if name in sources and str(sources[name]) != str(value):
        name = f"{name}_{macro.lower()}"
      sources.setdefault(name, value)
  return sources


def _prepare(*, input_file, output_file, prompt_files, task_feature_lengths,
             ensembles, labels, mixture_or_task_name, split, task_prompt,
             max_examples, model_config, initial_checkpoint_path, checkpoint,
             batch_size, decode_fn, seed, combine=None, adapter=None
             ) -> Tuple[serving.PromptServer, Iterator[infer_io.Request],
                        Optional[int]]:
  """Checks the settings, loads model and prompts: (server, requests, total lines)."""
  if input_file is None and not mixture_or_task_name:
    raise InferError("Nothing to serve: pass --input_file=requests.jsonl (or "
                     "--gin.INFER_INPUT), or a seqio task with "
                     f"{cli.EXAMPLES['MIXTURE_OR_TASK_NAME']}.")
  if input_file not in (None, "-") and not os.path.isfile(input_file):
    raise InferError(f"Input file {input_file} not found (--input_file / "
                     "--gin.INFER_INPUT).")
  if (input_file not in (None, "-") and output_file != "-" and
      os.path.abspath(input_file) == os.path.abspath(output_file)):
    raise InferError(f"The output file {output_file} is the input file; write the "
                     "predictions elsewhere.")
  lengths = dict(task_feature_lengths)
  if "inputs" not in lengths:
    raise InferError(f"TASK_FEATURE_LENGTHS needs 'inputs' (and 'targets' to "
                     f"decode); got {lengths}.")
  if jax.process_count() > 1:
    raise InferError("prompt_tuning.infer runs in one process; drop "
                     "--multiprocess/--multiprocess_gpu.")

  import tasks  # pylint: disable=g-import-not-at-top
  vocab = (tasks.task_vocabulary(mixture_or_task_name) if mixture_or_task_name
           else tasks.get_vocabulary())
  mesh = configurables.make_mesh()
  allow_mismatch = bool(cli.macro("ALLOW_PROMPT_MODEL_MISMATCH", False))
  sources = _prompt_sources(prompt_files)
  run = _decoder_only_run(sources, model_config)
  if run is not None:  # one GPT-2 / Llama run, served with its own method
    model, params, bank, frozen = load_decoder_only_run(
        run, sources, model_config, initial_checkpoint_path, mesh=mesh,
        checkpoint=checkpoint, seed=seed, adapter=adapter, vocabulary=vocab,
        allow_model_mismatch=allow_mismatch)
  else:
    model, params, bank, frozen = load_bank_model(
        sources, model_config, initial_checkpoint_path,
        mesh=mesh, checkpoint=checkpoint, seed=seed, combine=combine, adapter=adapter,
        vocabulary=vocab, allow_model_mismatch=allow_mismatch)
  decode_fn = configurables.decode_fn_for(getattr(model, "config", None), decode_fn)
  routes = serving.make_routes(bank, ensembles,
                               resolve_labels(labels, tasks.get_label_strings))
  decodes = any(r.labels is None for r in routes.values())
  if decodes and "targets" not in lengths:
    raise InferError(f"TASK_FEATURE_LENGTHS needs 'targets' (the decode length) "
                     f"unless every prompt is ranked against LABELS; got {lengths}.")

  if input_file is not None:
    total = infer_io.count_lines(input_file)
    requests = infer_io.read_jsonl(input_file, list(routes))
  else:
    if task_prompt is None:
      if len(routes) != 1:
        raise InferError(f"Serving task {mixture_or_task_name!r} with {len(routes)} "
                         f"prompts {list(routes)}: choose one with "
                         "--gin.INFER_TASK_PROMPT=\"'name'\".")
      task_prompt = next(iter(routes))
    if task_prompt not in routes:
      raise InferError(f"INFER_TASK_PROMPT {task_prompt!r} is not served; served: "
                       f"{list(routes)}.")
    total = None
    requests = infer_io.read_task(mixture_or_task_name, split, task_prompt,
                                  max_examples)
  ranked = {n: list(r.labels) for n, r in routes.items() if r.labels}
  logging.info("Frozen model %s; prompts %s; batches of %d x %d tokens%s.", frozen,
               list(bank.names), batch_size, lengths["inputs"],
               f"; ranking {ranked}" if ranked else "")
  server = serving.PromptServer(
      model, params, bank, vocab, routes=routes, input_length=lengths["inputs"],
      max_decode_length=int(lengths.get("targets", 1)), batch_size=batch_size,
      decode_fn=decode_fn, seed=seed, mesh=mesh, axis_rules=configurables.axis_rules())
  return server, requests, total


@gin.configurable("infer")
def infer(input_file: Optional[str] = None,
          output_file: str = "-",
          prompt_files: Optional[Mapping[str, Any]] = None,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          ensembles: Optional[Mapping[str, Sequence[str]]] = None,
          labels: Labels = None,
          mixture_or_task_name: Optional[str] = None,
          split: str = "validation",
          task_prompt: Optional[str] = None,
          max_examples: Optional[int] = None,
          model_config: Optional[T5Config] = None,
          initial_checkpoint_path: Optional[str] = None,
          checkpoint: Union[str, int] = "best",
          batch_size: int = 32,
          decode_fn: Optional[Callable[..., Any]] = None,
          log_every: int = 10,
          seed: int = 0,
          combine: Optional[str] = None,
          adapter: Optional[str] = None) -> InferSummary:
  """Serves requests and writes one JSONL record per request (gin: `infer.<arg>`).

  Args:
    input_file: JSONL requests (`-` = stdin); None serves `mixture_or_task_name`.
    output_file: JSONL predictions (`-` = stdout).
    prompt_files: name → `.npy` / MODEL_DIR / directory; the MODEL_DIR and
      PROMPT_FILE macros add one prompt each.
    task_feature_lengths: `inputs` = T (trim + pad), `targets` = decode length.
    ensembles: ensemble name → prompt names (vote / averaged scores).
    labels: rank-classify instead of decoding: a list of label strings, a task
      name (its labels), or served name → either.
    mixture_or_task_name / split / max_examples: the seqio split to serve when
      there is no input file (default: the MIXTURE_OR_TASK_NAME macro).
    task_prompt: the served name used for task examples (default: the only one).
    model_config / initial_checkpoint_path: the frozen model (defaults: the
      MODEL_CONFIG / INITIAL_CHECKPOINT_PATH macros, else a MODEL_DIR's record).
    checkpoint: which export of a MODEL_DIR: 'best', 'latest' or a step.
    batch_size: rows per compiled call (ensembles use one row per member).
    decode_fn: DECODE_FN (configs/decoding/*.gin); default greedy.
    log_every: log a progress line every this many batches (no terminal).
    seed: sampling seed.
    combine: where the served prompts go ('prefix', 'suffix', 'after_bos');
      None: as the MODEL_DIRs were trained, else 'prefix'.
    adapter: a PEFT LoRA / IA3 adapter directory merged into the frozen weights
      at load (gin: ADAPTER); the prompts are then served on the adapted model.
  """
  start = time.time()
  if model_config is None:
    model_config = cli.macro("MODEL_CONFIG")
  if initial_checkpoint_path is None:
    initial_checkpoint_path = cli.macro("INITIAL_CHECKPOINT_PATH")
  if mixture_or_task_name is None:
    mixture_or_task_name = cli.macro("MIXTURE_OR_TASK_NAME")
  try:
    server, requests, total = _prepare(
        input_file=input_file, output_file=output_file, prompt_files=prompt_files,
        task_feature_lengths=task_feature_lengths, ensembles=ensembles,
        labels=labels, mixture_or_task_name=mixture_or_task_name, split=split,
        task_prompt=task_prompt, max_examples=max_examples,
        model_config=model_config, initial_checkpoint_path=initial_checkpoint_path,
        checkpoint=checkpoint, batch_size=batch_size, decode_fn=decode_fn, seed=seed,
        combine=combine, adapter=adapter)
  except (FileNotFoundError, ValueError, KeyError, OSError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise InferError(str(message)) from e
  try:
    writer = infer_io.JsonlWriter(output_file)
  except OSError as e:
    raise InferError(f"Cannot write {output_file}: {e}") from e
  progress = summaries.Progress(total, every=log_every, unit="lines", bar=None)
  server.on_batch = progress.tick
  with writer:
    try:
      for record in server.serve(requests):
        writer.write(record)
        progress.advance(1)
    finally:
      progress.close()
  stats = server.stats
  summary = InferSummary(stats.requests, stats.predictions, stats.errors,
                         stats.truncated, stats.batches, time.time() - start,
                         output_file)
  line = infer_io.summary_line(
      lines=summary.lines, predictions=summary.predictions, errors=summary.errors,
      truncated=summary.truncated, input_length=server.input_length,
      batches=summary.batches, batch_size=batch_size, seconds=summary.seconds,
      output=output_file)
  print(line, file=sys.stderr, flush=True)
  return summary


# ------------------------------------------------------------------------------------
# Decoder-only models (GPT-2, Llama family): one training run served with its method.
# ------------------------------------------------------------------------------------


def _decoder_only_run(sources: Mapping[str, Any],
                      model_config: Optional[Any]) -> Optional[str]:
  """The one MODEL_DIR to serve when the frozen model is decoder-only, else None.

  A decoder-only run (prompt tuning, prefix tuning or LoPA) is served with the
  method it was trained with (`eval.load_trained`); several sources at once are
  plain prompt files in one bank (`load_bank_model`).
  """
  runs = {n: s for n, s in sources.items() if isinstance(s, (str, os.PathLike)) and
          layout.is_model_dir(s) and (pathlib.Path(s) / layout.CONFIG_JSON).is_file()}
  if not runs:
    return None
  decoder_only = {n: families.is_decoder_only(
      model_config if model_config is not None else families.config_from_dict(
          layout.read_record(s)["model_config"])) for n, s in runs.items()}
  if not any(decoder_only.values()):
    return None
  if len(sources) > 1:
    raise InferError(f"Serving {len(sources)} sources {list(sources)} with a "
                     "decoder-only model: serve one MODEL_DIR at a time, or several "
                     "prompt .npy files in one bank.")
  return str(next(iter(runs.values())))


def load_decoder_only_run(run: str, sources: Mapping[str, Any],
                          model_config: Optional[Any],
                          initial_checkpoint_path: Optional[str], *, mesh=None,
                          checkpoint: Union[str, int] = "best", seed: int = 0,
                          adapter: Optional[str] = None, vocabulary: Any = None,
                          allow_model_mismatch: bool = False):
  """(model, params, a one-name stand-in for a bank, frozen model) of a decoder-only
  run.

  The run's method is rebuilt from its config.json and its export loaded as
  `prompt_tuning.eval` does, so LoPA's instance prompts and prefix tuning's
  prefixes are served exactly as evaluated.
  """
  from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
  if adapter is not None:
    raise InferError("--gin.ADAPTER is not supported with decoder-only models yet.")
  method = eval_lib.resolve_method(None, run)
  model, params, _, source = eval_lib.load_trained(
      method, model_config, initial_checkpoint_path, model_dir=run,
      checkpoint=checkpoint, mesh=mesh, seed=seed, vocabulary=vocabulary,
      allow_model_mismatch=allow_model_mismatch)
  logging.info("Serving %s (method %s) on %s.", source, method.name,
               type(model.config).__name__)
  # What the server reads of a bank: the served name (no prompt index is fed).
  bank = types.SimpleNamespace(names=(next(iter(sources)),))
  frozen = (initial_checkpoint_path or
            layout.read_record(run).get("initial_checkpoint_path") or "random")
  return model, params, bank, str(frozen)


# ------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------


def parse_prompt_flags(values: Sequence[str]) -> Dict[str, str]:
  """`--prompt NAME=PATH` (or just PATH, named after the file) → {name: path}."""
  out = {}
  for value in values:
    name, sep, path = value.partition("=")
    if not sep:
      path = value
      name = pathlib.Path(path).stem if pathlib.Path(path).suffix else pathlib.Path(
          path).name
    if not name or not path:
      raise cli.app.UsageError(f"--prompt={value}: expected NAME=PATH.")
    out[name] = path
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Fail before loading anything when the input file is missing.
  if FLAGS.input_file not in (None, "-") and not os.path.isfile(FLAGS.input_file):
    sys.exit(f"prompt_tuning.infer: error: input file {FLAGS.input_file} not found "
             "(--input_file).")
  cli.setup(required_macros=INFER_MACROS)
  kwargs: Dict[str, Any] = {}
  if FLAGS.input_file:
    kwargs["input_file"] = FLAGS.input_file
  if FLAGS.output_file:
    kwargs["output_file"] = FLAGS.output_file
  if FLAGS.prompt:
    prompt_files = dict(cli.macro("PROMPT_FILES") or {})
    prompt_files.update(parse_prompt_flags(FLAGS.prompt))
    kwargs["prompt_files"] = prompt_files
  try:
    infer(**kwargs)
  except InferError as e:
    # gin appends "In call to configurable 'infer' (…)" lines; the message suffices.
    message = str(e).split("\n  In call to configurable")[0]
    sys.exit(f"prompt_tuning.infer: error: {message}")


def console_main():
  cli.run(main)


if __name__ == "__main__":
  console_main()
