"""The rules that keep a gin command line meaning one run.

The gin files have four kinds (configs/): `models/` bind MODEL_CONFIG, `methods/`
bind METHOD and OPTIMIZER and the method's arguments (PROMPT_LENGTH, …),
`prompts/` bind the prompt initializer, `runs/` bind what a run does (steps, batch,
evaluation). Run gins never include a method gin or set a method argument, so the
order of the files does not change which method trains. Two checks at parse time:

* one method per run: a gin file that sets METHOD after an earlier file already
  chose a different one is refused, naming both files (a `--gin.METHOD=...` flag
  may still choose it: flags are explicit);
* no silent typos: a `--gin.NAME=VALUE` flag for a macro that no gin file defines,
  no binding references and no entry point reads (e.g. `TRAIN_STEP` for
  `TRAIN_STEPS`) is refused with close matches.

Ordinary overrides keep working as in T5X: a later file or a flag changing
TRAIN_STEPS, BATCH_SIZE, PROMPT_LENGTH, ….
"""
from __future__ import annotations

import difflib
import pathlib
import re
from typing import Any, Iterable, List, Optional, Sequence, Set, Tuple

import gin

from prompt_tuning.errors import UserError

# Macros the entry points read directly (cli.macro) rather than through a binding.
CODE_MACROS = frozenset({
    "MODEL_DIR", "MODEL_CONFIG", "MIXTURE_OR_TASK_NAME", "INITIAL_CHECKPOINT_PATH",
    "PROMPT_FILE", "PROMPT_FILES", "EVAL_OUTPUT_DIR", "TRAIN_STEPS", "METHOD",
    "OPTIMIZER", "TASK_FEATURE_LENGTHS"})
# The macros only a method gin (or a flag) binds.
METHOD_MACROS = ("METHOD", "OPTIMIZER")
METHOD_GIN_DIR = "methods"


class MethodConflictError(UserError, ValueError):
  """Two gin files choose different methods."""


class UnknownMacroError(UserError, ValueError):
  """A `--gin.NAME=...` flag binds a macro nothing uses."""


def _macro_value(name: str) -> Any:
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return None


def _method_choice() -> Optional[str]:
  value = _macro_value("METHOD")
  return None if value is None else repr(value)


def _method_files(parsed) -> List[str]:
  """The `methods/*.gin` files among a parsed file's includes (depth first)."""
  out = []
  for include in getattr(parsed, "includes", ()) or ():
    if re.search(rf"(^|/){METHOD_GIN_DIR}/[^/]+\.gin$", include.filename):
      out.append(include.filename)
    out += _method_files(include)
  return out


def _describe(name: str, parsed) -> str:
  nested = [f for f in _method_files(parsed) if not f.endswith(name)]
  return f"{name} (through its include of {nested[-1]})" if nested else name


def parse_files(gin_files: Sequence[str]) -> Optional[str]:
  """Parses the files in order, refusing a second, different method.

  Returns:
    the file that chose METHOD (None when no file did).

  Raises:
    MethodConflictError: naming both files and both methods.
  """
  chooser: Optional[Tuple[str, str]] = None  # (file description, METHOD repr)
  for name in gin_files:
    before = _method_choice()
    parsed = gin.parse_config_file(name)
    after = _method_choice()
    if after is None or after == before:
      continue
    if chooser is not None:
      raise MethodConflictError(
          f"Two gin files choose the method: {chooser[0]} sets METHOD = {chooser[1]} "
          f"and the later {_describe(name, parsed)} sets METHOD = {after}. A run "
          "uses one method gin (configs/methods/*.gin); keep one of them (or choose "
          "with --gin.METHOD=...).")
    chooser = (_describe(name, parsed), after)
  return chooser[0] if chooser else None


def defined_macros() -> Set[str]:
  """The names of every macro gin currently binds."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  return {scope for (scope, selector) in config if selector == "gin.macro"}


def _references(value: Any, out: Set[str]) -> None:
  if isinstance(value, gin.config.ConfigurableReference):
    selector = value.scoped_selector
    if selector.endswith("/gin.macro"):
      out.add(selector[:-len("/gin.macro")].split("/")[-1])
    return
  if isinstance(value, dict):
    for v in value.values():
      _references(v, out)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _references(v, out)


def referenced_macros() -> Set[str]:
  """Every macro some binding refers to (`%NAME`)."""
  out: Set[str] = set()
  for params in gin.config._CONFIG.values():  # pylint: disable=protected-access
    for value in params.values():
      _references(value, out)
  return out


_BOUND_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def flag_macros(bindings: Iterable[str]) -> List[str]:
  """The macro names bound by binding lines (`NAME = value`, no dots)."""
  names = []
  for binding in bindings:
    for line in str(binding).splitlines():
      match = _BOUND_NAME.match(line)
      if match:
        names.append(match.group(1))
  return names


_DEFINITION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)


def config_macros(directories: Iterable[str]) -> Set[str]:
  """Macros some gin file under `directories` defines (`NAME = …` at a line start)."""
  out: Set[str] = set()
  for directory in directories:
    root = pathlib.Path(directory)
    if root.is_dir():
      for path in root.rglob("*.gin"):
        out.update(_DEFINITION.findall(path.read_text()))
  return out


def check_flag_macros(bindings: Sequence[str], known_before: Set[str],
                      config_dirs: Iterable[str] = ()) -> None:
  """Refuses flag-bound macros that nothing defines, references or reads.

  A macro that some gin file of `config_dirs` defines is known even when this run
  does not use it (e.g. one shared binding for a sweep's train and eval runs).

  Args:
    bindings: the `--gin.NAME=VALUE` / `--gin_bindings` lines.
    known_before: the macros the gin files defined (before the flags).
    config_dirs: the gin search paths.

  Raises:
    UnknownMacroError: with close matches among the known macros.
  """
  names = [n for n in flag_macros(bindings)
           if n not in known_before | referenced_macros() | CODE_MACROS]
  if not names:
    return
  known = (known_before | referenced_macros() | CODE_MACROS |
           config_macros(config_dirs))
  for name in names:
    if name in known:
      continue
    candidates = sorted(known | defined_macros() - {name})
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(close)}?" if close else
            "no gin file defines it and nothing reads it; check the spelling "
            "against the gin files' macros (configs/).")
    raise UnknownMacroError(f"--gin.{name}: unknown macro {name}; {hint}")
