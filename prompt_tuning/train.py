r"""Train a parameter-efficient method on a frozen T5: `python -m prompt_tuning.train`.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_base.gin \
    --gin_file=methods/prompt_tuning.gin \
    --gin_file=prompts/class_labels.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/rte_prompt'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'"

Rerunning the same command resumes from the latest checkpoint in MODEL_DIR. See
docs/TRAINING.md for the full workflow. Gin binds `TrainConfig` and `train` below;
everything they need comes in as arguments.
"""
from __future__ import annotations

import dataclasses
import functools
import logging as std_logging
import pathlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import gin
import jax
import optax
from absl import logging
from jax.sharding import Mesh

from prompt_tuning import building, cli, configurables, errors, partitioning
from prompt_tuning import fingerprint, gin_specs, shape_checks
from prompt_tuning import params as params_lib
from prompt_tuning.models import families
from prompt_tuning.run_dir import identity as run_identity
from prompt_tuning.run_dir import layout, train_state
from prompt_tuning.run_dir import lock as run_lock
from prompt_tuning.training import evaluation, global_stream, losses, trainer
from prompt_tuning.training import early_stopping, objectives, rank_eval
from prompt_tuning.methods import multitask
from prompt_tuning.training import model_io
from prompt_tuning.methods.base import Method
from prompt_tuning.prompt_files import check_prompt_file
from prompt_tuning.models.config import T5Config



@gin.configurable("train", denylist=["gin_config"])
def train(config: trainer.TrainConfig = gin.REQUIRED,
          method: Method = gin.REQUIRED,
          optimizer: optax.GradientTransformation = gin.REQUIRED,
          model_config: T5Config = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = gin.REQUIRED,
          learning_rate_fn: Optional[Callable[[int], float]] = None,
          decode_fn: Optional[Callable[..., Any]] = None,
          gin_config: Optional[str] = None,
          objective: Optional[objectives.ObjectiveSpec] = None,
          wayward: Optional[objectives.WaywardSpec] = None) -> trainer.TrainResult:
  """Builds the mesh and runs `build_and_train` (gin: `train.<arg>`).

  `optim.trainable_regexes.regexes`, when bound, replaces the method's trainable
  regexes (e.g. to also train the decoder's final layer norm). `objective`
  (`@objectives.perceptron()` / `@objectives.valid_label()`) and `wayward`
  (`@objectives.wayward()`) replace or regularize the token cross-entropy
  (`training/objectives.py`).
  """
  check_method_prompt_file(method, model_config)  # before any frozen weight is read
  method = dataclasses.replace(method,
                               trainable=configurables.trainable_regexes(method))
  identity = identity_from_gin(config)
  identity.update(objectives_record(objective, wayward))
  # A restart that changes the run is refused before anything is written.
  record = dict(trainer.run_record(config, method, model_config,
                                   initial_checkpoint_path), **identity)
  train_state.check_or_write_run_config(config.model_dir, record, write=False)
  return build_and_train(
      config, method=method, model_config=model_config, optimizer=optimizer,
      initial_checkpoint_path=initial_checkpoint_path,
      mesh=configurables.make_mesh(), axis_rules=configurables.axis_rules(),
      learning_rate_fn=learning_rate_fn or _bound_learning_rate(),
      decode_fn=decode_fn, gin_config=gin_config, identity=identity,
      objective=objective, wayward=wayward)


def build_and_train(config: trainer.TrainConfig, *, method: Method,
                    model_config: T5Config, optimizer: optax.GradientTransformation,
                    initial_checkpoint_path: Optional[str] = None,
                    mesh: Optional[Mesh] = None,
                    axis_rules: Optional[partitioning.Rules] = None,
                    batches_fn: Optional[Callable[[int], Iterator[Any]]] = None,
                    learning_rate_fn: Optional[Callable[[int], float]] = None,
                    decode_fn: Optional[Callable[..., Any]] = None,
                    gin_config: Optional[str] = None,
                    identity: Optional[Dict[str, Any]] = None,
                    objective: Optional[objectives.ObjectiveSpec] = None,
                    wayward: Optional[objectives.WaywardSpec] = None
                    ) -> trainer.TrainResult:
  """Builds what the loop needs and runs `trainer.train`, holding MODEL_DIR's lock.

  Args:
    config: the run's settings.
    method: what is trained and how it enters the network.
    model_config: the frozen model's `T5Config` (`MODEL_CONFIG`).
    optimizer: optax transformation for the trainable parameters (`OPTIMIZER`).
    initial_checkpoint_path: the frozen model (None: random init, for tests).
    mesh: defaults to `partitioning.make_mesh()` over all devices.
    axis_rules: defaults to `partitioning.rules()`.
    batches_fn: `start_batch -> iterator of this host's batches`; defaults to
      `data.train_batches` for the configured task (tests inject their own).
    learning_rate_fn: step → learning rate, for summaries (optional).
    decode_fn: decoder for evaluation (`DECODE_FN`; default greedy).
    gin_config: the operative gin config, saved as `MODEL_DIR/config.gin`.
    identity: more of the run's identity for config.json (`identity_from_gin`).
    objective / wayward: a classification objective and wayward regularization
      (`training/objectives.py`; None: token cross-entropy alone).

  Raises:
    lock.ModelDirLockedError: another run is using MODEL_DIR (a run that died is
      taken over with a warning).
    data.UnknownTaskError, data.VocabularyTooLargeError: checked before anything
      is loaded (only when the configured task feeds the run).
    ValueError: MODEL_DIR holds a different run.
    And what `trainer.train` raises.
  """
  host0 = jax.process_index() == 0
  with run_lock.held(config.model_dir, enabled=host0):
    if batches_fn is None:  # fail on a task typo in seconds, not after loading
      from prompt_tuning import data  # pylint: disable=g-import-not-at-top  # seqio, TF
      data.check_task(config.mixture_or_task_name, model_config.vocab_size)
    mesh = mesh if mesh is not None else partitioning.make_mesh()
    axis_rules = axis_rules if axis_rules is not None else partitioning.rules()
    # Every batch shape against the mesh, before anything is loaded.
    host_batch_size = shape_checks.check_train_shapes(
        config.batch_size, config.eval_batch_size, config.num_microbatches, mesh,
        jax.process_count(), evaluates=config.eval_period >= 0)
    logging.info("Mesh %s over %d devices on %d hosts; %d examples per host and step.",
                 dict(mesh.shape), mesh.size, jax.process_count(), host_batch_size)

    rank = rank_settings(config)  # every task's labels, before anything is loaded
    early_stopping.check(config.early_stopping_patience, config.eval_period, True)
    label_ids = objective_labels(config, objective, wayward)  # before loading
    record = dict(trainer.run_record(config, method, model_config,
                                     initial_checkpoint_path), **(identity or {}))
    train_state.check_or_write_run_config(config.model_dir, record, write=host0)

    init_rng, _ = trainer.seed_keys(config.seed)
    model_config, params, shardings = building.build_params(
        method, model_config, initial_checkpoint_path, init_rng, mesh=mesh,
        axis_rules=axis_rules)
    if batches_fn is None:  # the configured task feeds the run: its vocabulary
      write_fingerprint(config, method, model_config, initial_checkpoint_path,
                        params, write=host0)  # refuses another frozen model
    if host0 and gin_config:
      train_state.write_text(pathlib.Path(config.model_dir) / layout.CONFIG_GIN,
                             gin_config)
    model = method.build(model_config)
    io = model_io.of(model_config)  # the family's batches, loss and decoder
    loss_fn = io.loss_fn(model, config.z_loss, config.loss_normalizing_factor,
                         config.enable_dropout, telemetry=True)
    loss_fn = with_objectives(loss_fn, objective, wayward, label_ids, method,
                              model_config, params, config)
    decode_fn = configurables.decode_fn_for(model_config, decode_fn)
    evaluator = evaluation.Evaluator(  # reads its examples at the first evaluation
        model, mesh, shardings, config.mixture_or_task_name,
        config.task_feature_lengths,
        batch_size=config.eval_batch_size or config.batch_size,
        split=config.eval_split, max_examples=config.max_eval_examples,
        max_decode_length=config.max_decode_length, z_loss=config.z_loss,
        use_cached=config.use_cached, decode_fn=decode_fn, rank=rank,
        axis_rules=axis_rules, prompt_rows=multitask.task_rows(method))
    if batches_fn is None:
      batches_fn = functools.partial(_task_batches, config=config, mesh=mesh, io=io,
                                     prompt_names=multitask.task_names(method))
    built = trainer.Built(loss_fn, params, shardings, mesh, axis_rules)
    return trainer.train(config, method, optimizer, built, batches_fn, evaluator,
                         learning_rate_fn)


def rank_settings(config: trainer.TrainConfig) -> Optional[rank_eval.RankSettings]:
  """The label strings of every evaluated task when `rank_classification` is on."""
  if not config.rank_classification:
    return None
  labels = {task.name: strings for task, strings in task_label_strings(
      config.mixture_or_task_name, "TrainConfig.rank_classification",
      "or set --gin.TrainConfig.rank_classification=False")}
  return rank_eval.RankSettings(labels, config.rank_normalization)


def task_label_strings(mixture_or_task_name: str, setting: str, fix: str
                       ) -> List[Tuple[Any, Sequence[str]]]:
  """(task, label strings) of every task of the mixture; a task without labels is
  refused naming `setting` and the `fix`, before anything is loaded."""
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top  # seqio, TF
  import tasks  # pylint: disable=g-import-not-at-top
  out = []
  for task in data.tasks_of(mixture_or_task_name):
    strings = tasks.get_label_strings(task.name)
    if not strings:
      raise errors.UserError(
          f"{setting}: task {task.name!r} has no label strings (a generation "
          f"task?); register them with tasks.register_labels, {fix}.")
    out.append((task, strings))
  return out


def objectives_record(objective: Optional[objectives.ObjectiveSpec],
                      wayward: Optional[objectives.WaywardSpec]) -> Dict[str, Any]:
  """config.json fields of the training objective (none for plain cross-entropy)."""
  out = {}
  if objective is not None:
    out["objective"] = dataclasses.asdict(objective)
  if wayward is not None:
    out["wayward"] = dataclasses.asdict(wayward)
  return out


def objective_labels(config: trainer.TrainConfig,
                     objective: Optional[objectives.ObjectiveSpec],
                     wayward: Optional[objectives.WaywardSpec]):
  """The `[C, L]` label ids of a classification objective (None without one);
  refuses settings the objectives cannot run with, before anything is loaded."""
  if (objective is not None or wayward is not None) and (
      config.num_microbatches or 1) > 1:
    raise errors.UserError(
        "train.objective / train.wayward do not support NUM_MICROBATCHES > 1 yet; "
        "drop one of them.")
  if objective is None:
    return None
  found = {tuple(strings): task for task, strings in task_label_strings(
      config.mixture_or_task_name, f"train.objective = {objective.objective}",
      "or train with the token cross-entropy (drop train.objective)")}
  if len(found) > 1:
    raise errors.UserError(
        f"train.objective = {objective.objective} ranks one label set, but the tasks "
        f"of {config.mixture_or_task_name!r} have different labels "
        f"{[list(k) for k in found]}; train them separately.")
  strings, task = next(iter(found.items()))
  vocab = task.output_features["targets"].vocabulary
  ids = rank_eval.label_tokens(vocab, strings, int(getattr(vocab, "eos_id", 1)))
  width = int(config.task_feature_lengths.get("targets", ids.shape[1]))
  if ids.shape[1] > width:
    raise errors.UserError(
        f"The labels {list(strings)} need {ids.shape[1]} target tokens (with EOS) "
        f"but TASK_FEATURE_LENGTHS['targets'] is {width}; raise it.")
  return tuple(tuple(int(i) for i in row) for row in ids)


def with_objectives(loss_fn: losses.LossFn,
                    objective: Optional[objectives.ObjectiveSpec],
                    wayward: Optional[objectives.WaywardSpec], label_ids,
                    method: Method, model_config: T5Config, params: Any,
                    config: trainer.TrainConfig) -> Any:
  """`loss_fn` wrapped by the chosen objective and wayward regularization."""
  if objective is not None:
    loss_fn = objectives.ClassificationLoss(loss_fn, label_ids, objective)
  if wayward is None:
    return loss_fn
  prompt_path = f"{families.prompt_scope(model_config)}/prompt"
  try:
    prompt = params_lib.get_param(params, prompt_path)
  except KeyError:
    prompt = None
  if prompt is None or len(prompt.shape) != 2:
    raise errors.UserError(
        f"train.wayward regularizes a [P, H] prompt at {prompt_path}; method "
        f"{method.name!r} has none there. Use it with prompt tuning (or LoPA's Z_S).")
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top  # seqio, TF
  task = data.tasks_of(config.mixture_or_task_name)[0]
  ids = list(task.output_features["inputs"].vocabulary.encode(wayward.text))
  if not ids:
    raise errors.UserError(f"objectives.wayward.text {wayward.text!r} has no tokens.")
  length = int(prompt.shape[0])
  tiled = (ids * (length // len(ids) + 1))[:length]  # repeated or cut to P
  if len(ids) != length:
    std_logging.info("Wayward text prompt of %d tokens %s to the prompt length %d.",
                     len(ids), "repeated" if len(ids) < length else "cut", length)
  return objectives.WaywardLoss(loss_fn, tuple(int(i) for i in tiled), wayward.gamma,
                                prompt_path, families.embedding_path(model_config))


def _task_batches(start_batch: int, *, config: trainer.TrainConfig,
                  mesh: Mesh, io: Optional[model_io.ModelIO] = None,
                  prompt_names: Optional[Sequence[str]] = None) -> Iterator[Any]:
  """This process's rows of the configured task's global stream from `start_batch`
  on (a function of the global step only: see `training/global_stream.py`);
  `prompt_names` (a multi-task prompt's rows) adds each example's `prompt_index`."""
  io = io or model_io.ModelIO(decoder_only=False)
  routed = {} if prompt_names is None else {"prompt_names": prompt_names}
  global_batches = io.train_batches(
      config.mixture_or_task_name, config.task_feature_lengths, config.batch_size,
      split=config.train_split, seed=config.seed, shard_index=0, num_shards=1,
      start_batch=start_batch, use_cached=config.use_cached, shuffle=config.shuffle,
      **routed)
  return global_stream.rows_of(global_batches,
                               global_stream.process_rows(config.batch_size, mesh))


def write_fingerprint(config: trainer.TrainConfig, method: Method,
                      model_config: Any, initial_checkpoint_path: Optional[str],
                      params: Any, *, write: bool) -> Dict[str, Any]:
  """`MODEL_DIR/model_fingerprint.json`: the frozen model's embedding table, the
  task's vocabulary and the method's placement, so that every export of the run
  carries them (a `.model.json` sidecar per array) and eval/infer can refuse a
  prompt served on another model. Every process takes part in gathering a
  sharded embedding table; only `write` (host 0) writes."""
  import tasks  # pylint: disable=g-import-not-at-top  # seqio + TF
  embedding_path = families.embedding_path(model_config)
  table = evaluation.to_host(params_lib.get_param(params, embedding_path))
  record = fingerprint.of_model(
      table, tasks.task_vocabulary(config.mixture_or_task_name),
      fingerprint.placement(method),
      name=initial_checkpoint_path or "a randomly initialized model")
  stored = fingerprint.read_run(config.model_dir)
  differ = stored and layout.has_checkpoints(config.model_dir) and (
      fingerprint.differences(stored, record))
  if differ:  # e.g. the bundled model was rebuilt since the run started
    raise train_state.RunIdentityError(
        f"MODEL_DIR {config.model_dir} was trained on frozen model "
        f"{stored.get('model')} but {record['model']} differs from it in "
        f"{', '.join(differ)} ({fingerprint.RUN_FILE}). Nothing was written. Resume "
        "with the original frozen model, or pass a new --gin.MODEL_DIR=... to start "
        "fresh.")
  if write:
    train_state.write_model_fingerprint(config.model_dir, record)
  return record


def identity_from_gin(config: trainer.TrainConfig) -> Dict[str, Any]:
  """What config.json records beyond the trainer's own fields: the method and
  optimizer as gin built them, local data fingerprints, the process count."""
  from tasks import local  # pylint: disable=g-import-not-at-top  (tasks is optional)
  return {
      "method_spec": gin_specs.macro_spec("METHOD"),
      "optimizer_spec": gin_specs.macro_spec("OPTIMIZER"),
      "data_fingerprints": run_identity.fingerprints(
          local.data_files(config.mixture_or_task_name)),
      "process_count": jax.process_count(),
  }


def check_method_prompt_file(method: Method, model_config: Optional[T5Config]) -> None:
  """PROMPT_FILE (prompts/from_file.gin) against the method's P and the model's H."""
  path = cli.macro("PROMPT_FILE")
  if isinstance(path, str) and path:
    check_prompt_file(path, getattr(method.prompt, "length", None),
                      getattr(model_config, "emb_dim", None))


def _bound_learning_rate() -> Optional[Callable[[int], float]]:
  """A constant `learning_rate` bound to OPTIMIZER's builder, for the summaries."""
  try:
    reference = gin.query_parameter("OPTIMIZER/macro.value")
    value = gin.query_parameter(f"{reference.configurable.selector}.learning_rate")
  except (ValueError, AttributeError):
    return None
  if isinstance(value, (int, float)):
    return lambda step: float(value)
  return None


def raise_if_preempted(result: Any) -> Any:
  """`result` unless training stopped on SIGTERM: then `errors.Preempted`, so that the
  command exits non-zero (schedulers do not read success) and a caller training in
  process (research/runs.py) stops instead of reading a partial run as finished."""
  if result.preempted:
    raise errors.Preempted(
        f"Stopped at step {result.step} on SIGTERM after writing its checkpoint; "
        "rerun the same command to resume (exit status "
        f"{errors.EXIT_PREEMPTED}).")
  return result


def main(argv: Sequence[str]) -> Any:
  if len(argv) > 1:
    raise cli.app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup(required_macros=cli.TRAIN_MACROS)
  result = raise_if_preempted(train(gin_config=gin.config_str()))
  # The root logger (as the trainer's lines): absl's own logger is set to WARNING.
  std_logging.info("Done at step %d.", result.step)


def console_main():
  cli.run(main)


if __name__ == "__main__":
  console_main()
