"""Run-identity specs read from gin, and a method rebuilt from its recorded spec.

Entry-point level (it reads gin's registry); `run_dir/identity.py` compares the
plain values these produce.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping, Optional

import gin

from prompt_tuning.run_dir.identity import INIT_ONLY_ARGUMENTS, IdentityMismatchError


# ------------------------------------------------------------------------------------
# Specs from gin.
# ------------------------------------------------------------------------------------


def _macro_value(name: str) -> Any:
  config = gin.config._CONFIG  # pylint: disable=protected-access
  entry = config.get((name, "gin.macro"))
  return entry["value"] if entry else f"%{name}"


def _plain(value: Any, depth: int = 0) -> Any:
  """A gin value as JSON data: macros resolved, references as nested specs."""
  if depth > 20:
    return repr(value)
  if isinstance(value, gin.config.ConfigurableReference):
    if value.scoped_selector.endswith("/gin.macro"):
      name = value.scoped_selector[:-len("/gin.macro")].split("/")[-1]
      return _plain(_macro_value(name), depth + 1)
    spec = selector_spec(value.configurable.selector, depth + 1)
    return spec if value.evaluate else {"reference": spec["factory"]}
  if isinstance(value, Mapping):
    return {str(k): _plain(v, depth + 1) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v, depth + 1) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def selector_spec(selector: str, depth: int = 0) -> Dict[str, Any]:
  """`{"factory": selector, "arguments": {...}}`: gin's bindings, else defaults."""
  registered = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
  if registered is None:
    return {"factory": selector, "arguments": {}}
  name = f"{registered.module}.{registered.name}" if registered.module else (
      registered.name)
  bound = gin.config._CONFIG.get(("", registered.selector), {})  # pylint: disable=protected-access
  arguments = {}
  try:
    parameters = inspect.signature(registered.wrapped).parameters
  except (TypeError, ValueError):
    parameters = {}
  for arg, parameter in parameters.items():
    if arg in bound:
      arguments[arg] = _plain(bound[arg], depth)
    elif parameter.default is not inspect.Parameter.empty:
      arguments[arg] = _plain(parameter.default, depth)
  for arg in set(bound) - set(arguments):  # **kwargs bindings
    arguments[arg] = _plain(bound[arg], depth)
  return {"factory": name, "arguments": arguments}


def macro_spec(name: str) -> Optional[Dict[str, Any]]:
  """The spec of what macro `name` (e.g. METHOD, OPTIMIZER) calls; None if unset."""
  try:
    value = gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return None
  if isinstance(value, gin.config.ConfigurableReference):
    return selector_spec(value.configurable.selector)
  return {"factory": repr(value), "arguments": {}}


# ------------------------------------------------------------------------------------
# Rebuilding.
# ------------------------------------------------------------------------------------


def rebuild_method(spec: Mapping[str, Any], overrides: Optional[Mapping] = None):
  """The trained method from its recorded spec (no initializer: trained values
  follow). `overrides` replaces arguments (after a contradiction check)."""
  registered = gin.config._REGISTRY.get_match(spec["factory"])  # pylint: disable=protected-access
  if registered is None:
    raise IdentityMismatchError(
        f"config.json names the method factory {spec['factory']!r}, which is not "
        "registered here (import prompt_tuning.methods.configurables).")
  arguments = {k: v for k, v in spec.get("arguments", {}).items()
               if k not in INIT_ONLY_ARGUMENTS and not isinstance(v, Mapping)}
  arguments.update(overrides or {})
  return registered.wrapped(**arguments)
