"""T5X-style command lines shared by `train`, `eval` and `infer`.

  python -m prompt_tuning.train \\
      --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_finetune.gin \\
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'glue_sst2_v200'"

Flags (as in T5X):
  --gin_file          repeatable; searched in --gin_search_paths
  --gin.NAME=VALUE    a gin binding (`NAME = VALUE`, gin syntax after `=`); same as
                      --gin_bindings="NAME = VALUE"
  --gin_search_paths  comma-separated; the repo's `configs/` and the installed
                      package's `configs/` are always searched
  --multiprocess_gpu / --coordinator_address / --process_count / --process_index
                      join a multi-process run (`jax.distributed.initialize`);
  --multiprocess      join with auto-detection (TPU pods, SLURM); also on when
                      JAX_COORDINATOR_ADDRESS is set (with JAX's other env vars)
  --tfds_data_dir     where TFDS data lives

An entry point calls `cli.run(main)`; `main` calls `cli.setup(required_macros)`
which initializes JAX's distributed runtime, parses gin and names any missing
required macro together with the flag that sets it.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import logging as std_logging
import os
import pathlib
import re
import sys
from typing import Callable, List, Optional, Sequence

import gin
from absl import app, flags, logging

from prompt_tuning import configurables  # pylint: disable=unused-import  # gin names
from prompt_tuning import partitioning

FLAGS = flags.FLAGS

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
PACKAGE_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

flags.DEFINE_multi_string("gin_file", [], "Gin config files (repeatable).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. \"MODEL_DIR='/x'\" "
                          "(or use --gin.MODEL_DIR=\"'/x'\").")
flags.DEFINE_list("gin_search_paths", [], "Extra directories to look for gin files in "
                  "(the repo's and the package's configs/ are always searched).")
flags.DEFINE_bool("multiprocess_gpu", False, "Initialize JAX's distributed runtime "
                  "from --coordinator_address/--process_count/--process_index.")
flags.DEFINE_bool("multiprocess", False, "Initialize JAX's distributed runtime with "
                  "auto-detected settings (TPU pods, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("process_count", None, "Number of processes.")
flags.DEFINE_integer("process_index", None, "This process's index.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (seqio override).")

# Macros every training gin must define (checked after parsing).
TRAIN_MACROS = ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS",
                "TRAIN_STEPS", "INITIAL_CHECKPOINT_PATH")
EXAMPLES = {
    "MODEL_DIR": "--gin.MODEL_DIR=\"'/tmp/my_run'\"",
    "MIXTURE_OR_TASK_NAME": "--gin.MIXTURE_OR_TASK_NAME=\"'super_glue_rte_v102'\"",
    "TASK_FEATURE_LENGTHS": "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, "
                            "'targets': 8}\"",
    "TRAIN_STEPS": "--gin.TRAIN_STEPS=30000",
    "INITIAL_CHECKPOINT_PATH": "--gin.INITIAL_CHECKPOINT_PATH=\"'gs://t5-data/"
                               "pretrained_models/t5x/t5_1_1_lm100k_base/"
                               "checkpoint_1100000'\" (or None for a random init)",
    "PROMPT_FILE": "--gin.PROMPT_FILE=\"'/path/to/prompt.npy'\"",
}


def import_gin_modules() -> None:
  """Imports `tasks` (its registrations); `configurables` is imported above."""
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ("tasks",):
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise
      logging.info("Module %s not available; its configurables are not registered.",
                   name)


# ------------------------------------------------------------------------------------
# Flags → gin.
# ------------------------------------------------------------------------------------


def rewrite_gin_args(argv: Sequence[str]) -> List[str]:
  """`--gin.NAME=VALUE` → `--gin_bindings=NAME = VALUE` (T5X's shorthand)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    elif arg.startswith("--gin.") and "=" not in arg:
      raise app.UsageError(f"{arg}: expected --gin.NAME=VALUE.")
    else:
      out.append(arg)
  return out


def search_paths(extra: Sequence[str] = ()) -> List[str]:
  paths = [p for p in extra if p]
  paths += [str(p) for p in (REPO_CONFIGS, PACKAGE_CONFIGS) if p.is_dir()]
  paths.append(os.getcwd())
  return list(dict.fromkeys(paths))


class _QuietGinSearch(std_logging.Filter):
  """Drops gin's "Path not found" lines for every search path it tries."""

  def filter(self, record):
    return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


_QUIET = _QuietGinSearch()


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              extra_search_paths: Sequence[str] = ()) -> None:
  """Parses gin files (found in the search paths) and bindings, in that order."""
  import_gin_modules()
  if _QUIET not in std_logging.getLogger().filters:
    std_logging.getLogger().addFilter(_QUIET)
  paths = search_paths(extra_search_paths)
  for path in paths:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not os.path.exists(f) and not any(os.path.exists(os.path.join(p, f))
                                         for p in paths):
      raise FileNotFoundError(f"Gin file {f!r} not found in the current directory or "
                              f"the search paths {paths}; pass --gin_search_paths.")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                        finalize_config=False)
  except ValueError as e:
    # Gin's message names the binding and the file (or bindings line) it came from;
    # add close matches for a misspelt configurable or parameter.
    hint = gin_typo_hint(str(e))
    if not hint:
      raise
    raise ValueError(f"{e}\n{hint}") from None


_NO_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named "
                           r"'([^']+)'")
_NO_CONFIGURABLE = re.compile(r"No configurable matching '([^']+)'")


def gin_typo_hint(message: str) -> Optional[str]:
  """'Did you mean …?' for gin's unknown-configurable / unknown-parameter errors."""
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  try:
    match = _NO_PARAMETER.search(message)
    if match:
      wrapped = registry.get_match(match.group(1)).wrapped
      names = list(inspect.signature(wrapped).parameters)
      close = difflib.get_close_matches(match.group(2), names, n=3, cutoff=0.6)
    else:
      match = _NO_CONFIGURABLE.search(message)
      if not match:
        return None
      names = sorted({n for selector, c in registry.items()
                      for n in (selector, c.name)})
      close = difflib.get_close_matches(match.group(1), names, n=3, cutoff=0.6)
  except Exception:  # pylint: disable=broad-except  (a hint must never mask gin's error)
    return None
  if not close:
    return None
  return f"  Did you mean {' or '.join(repr(c) for c in close)}?"


def _is_required_marker(value) -> bool:
  return value is gin.REQUIRED or repr(value) == "%gin.REQUIRED"


def missing_macros(names: Sequence[str]) -> List[str]:
  """The macros among `names` that gin does not define (or leaves REQUIRED)."""
  missing = []
  for name in names:
    try:
      value = gin.query_parameter(f"{name}/macro.value")
    except ValueError:
      missing.append(name)
      continue
    if _is_required_marker(value):
      missing.append(name)
  return missing


def check_required_macros(names: Sequence[str]) -> None:
  """Raises a UsageError naming each missing macro and the flag that sets it."""
  missing = missing_macros(names)
  if missing:
    lines = [f"  {name}: add {EXAMPLES.get(name, f'--gin.{name}=...')}"
             for name in missing]
    raise app.UsageError("Required gin macro(s) not set:\n" + "\n".join(lines) +
                         "\n(or define them in a --gin_file).")


def macro(name: str, default=None):
  """The value of a gin macro (evaluating `@fn()` references), or `default`."""
  try:
    value = gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value
  return value


# ------------------------------------------------------------------------------------
# Start-up: distributed runtime, gin, logging.
# ------------------------------------------------------------------------------------


def distributed_config() -> partitioning.DistributedConfig:
  """From the flags; `JAX_COORDINATOR_ADDRESS` in the environment also enables it."""
  enabled = bool(FLAGS.multiprocess_gpu or FLAGS.multiprocess or
                 FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  return partitioning.DistributedConfig(
      enabled=enabled, coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.process_count, process_id=FLAGS.process_index)


def setup(required_macros: Sequence[str] = ()) -> None:
  """Distributed init → gin parsing → required-macro check → data dirs."""
  partitioning.initialize_distributed(distributed_config())
  parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  check_required_macros(required_macros)
  if FLAGS.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(FLAGS.tfds_data_dir)


def setup_logging() -> None:
  """Console INFO lines with timestamps; quiet noisy libraries."""
  logging.set_verbosity(logging.INFO)
  for name in ("absl", "orbax", "jax._src", "tensorflow"):
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:  # keep TensorFlow (data only) off the accelerators
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass


def run(main: Callable[[Sequence[str]], None], argv: Optional[Sequence[str]] = None
        ) -> None:
  """`app.run(main)` with T5X's `--gin.NAME=VALUE` flags."""
  argv = rewrite_gin_args(list(sys.argv if argv is None else argv))

  def wrapped(args):
    setup_logging()
    return main(args)

  app.run(wrapped, argv=argv)


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
  """The argparse parser of a `scripts/*.py` command.

  The docstring's first paragraph is the description; the rest, when there is
  any, is the epilog of `--help`, kept as written (usage examples).
  """
  description, _, rest = doc.partition("\n\n")
  return argparse.ArgumentParser(
      prog=prog, description=description, epilog=rest or None,
      formatter_class=argparse.RawDescriptionHelpFormatter)
