"""Imports flow one way (docs/ARCHITECTURE.md): each package's imports, at any
depth of the file (function-level imports too), are checked against its rule."""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "prompt_tuning"

ENTRY_POINTS = ("prompt_tuning.train", "prompt_tuning.eval", "prompt_tuning.infer",
                "prompt_tuning.demo", "prompt_tuning.plan")
ENTRY_LEVEL = ENTRY_POINTS + ("prompt_tuning.cli", "prompt_tuning.configurables",
                              "prompt_tuning.building", "prompt_tuning.research",
                              "prompt_tuning.gin_specs")
DATA = ("gin", "seqio", "tasks", "prompt_tuning.data")

# module prefix → prefixes it must not import.
RULES = {
    "prompt_tuning.params": ("prompt_tuning", "tasks", "gin", "seqio"),
    "prompt_tuning.models": DATA + ENTRY_LEVEL + (
        "prompt_tuning.checkpoints", "prompt_tuning.methods", "prompt_tuning.training",
        "prompt_tuning.inference", "prompt_tuning.run_dir", "prompt_tuning.prompt_files"),
    "prompt_tuning.methods": DATA + ENTRY_LEVEL + (
        "prompt_tuning.run_dir", "prompt_tuning.training", "prompt_tuning.inference",
        "prompt_tuning.prompt_files", "prompt_tuning.checkpoints"),
    "prompt_tuning.run_dir": DATA + ENTRY_LEVEL + (
        "prompt_tuning.models", "prompt_tuning.methods", "prompt_tuning.training",
        "prompt_tuning.inference", "prompt_tuning.prompt_files",
        "prompt_tuning.checkpoints"),
    "prompt_tuning.checkpoints": DATA + ENTRY_LEVEL + (
        "prompt_tuning.methods", "prompt_tuning.training", "prompt_tuning.inference",
        "prompt_tuning.run_dir", "prompt_tuning.prompt_files"),
    "prompt_tuning.prompt_files": DATA + ENTRY_LEVEL + (
        "prompt_tuning.training", "prompt_tuning.inference"),
    "prompt_tuning.training": ENTRY_LEVEL + ("gin",),
    "prompt_tuning.inference": ENTRY_LEVEL + ("gin", "prompt_tuning.training"),
    "prompt_tuning.partitioning": DATA + ENTRY_LEVEL + (
        "prompt_tuning.methods", "prompt_tuning.training", "prompt_tuning.inference"),
}
# Nothing imports the entry points except other entry-level modules.
EVERYONE = ENTRY_POINTS


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, name: str):
  """(line, imported module) for every import in `source` (relative ones resolved)."""
  package = name if name.count(".") == 0 else name.rsplit(".", 1)[0]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      for alias in node.names:  # `from prompt_tuning import eval` imports a module
        yield node.lineno, f"{base}.{alias.name}" if base else alias.name


def _under(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + ".")


def violations(source: str, name: str):
  """`name:line imports X (rule)` for each import that breaks a rule."""
  found = []
  forbidden = [p for rule, ps in RULES.items() if _under(name, rule) for p in ps]
  if not any(_under(name, p) for p in ENTRY_LEVEL):
    forbidden += EVERYONE
  for line, imported in imports(source, name):
    for prefix in forbidden:
      if _under(imported, prefix) and not _under(imported, name):
        found.append(f"{name}:{line} imports {imported} (forbidden: {prefix})")
  return found


def test_every_module_imports_only_downwards():
  problems = []
  for path in sorted(PACKAGE.rglob("*.py")):
    if "configs" in path.relative_to(PACKAGE).parts:
      continue
    problems += violations(path.read_text(), module_name(path))
  assert not problems, "Imports against docs/ARCHITECTURE.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("name, source, offending", [
    ("prompt_tuning.models.t5", "import gin\n", "gin"),
    ("prompt_tuning.models.layers",
     "def f():\n  from prompt_tuning.methods import base\n", "prompt_tuning.methods.base"),
    ("prompt_tuning.methods.prompt", "import tasks\n", "tasks"),
    ("prompt_tuning.methods.bank", "from prompt_tuning import prompt_files\n",
     "prompt_tuning.prompt_files"),
    ("prompt_tuning.training.trainer", "from prompt_tuning import train\n",
     "prompt_tuning.train"),
    ("prompt_tuning.params", "from prompt_tuning.models import t5\n",
     "prompt_tuning.models.t5"),
    ("prompt_tuning.run_dir.layout", "from ..methods import base\n",
     "prompt_tuning.methods.base"),
])
def test_the_check_names_the_offending_import(name, source, offending):
  found = violations(source, name)
  assert found and offending in found[0] and name in found[0]


def test_entry_points_may_import_each_other_and_the_layers():
  assert not violations("from prompt_tuning import eval, configurables\n"
                        "from prompt_tuning.training import trainer\n",
                        "prompt_tuning.infer")
  assert not violations("from prompt_tuning.models import t5\n",
                        "prompt_tuning.methods.base")


def test_readme_layout_table_names_every_top_level_module():
  """The README's layout table matches the tree: each module and package of
  `prompt_tuning/` is named there (as `prompt_tuning/x`, in a `{a,b}` group, or in
  backticks), and every name it lists exists."""
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
  names = sorted({p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
                 | {p.name for p in PACKAGE.iterdir()
                    if p.is_dir() and (p / "__init__.py").exists()})
  import re  # pylint: disable=g-import-not-at-top
  missing = [n for n in names
             if not re.search(rf"(prompt_tuning/|[{{,`(]){n}[`}},/.]", section)]
  assert not missing, f"README layout table does not mention: {missing}"
  listed = re.findall(r"`prompt_tuning/\{([a-z_,]+)\}\.py`", section)
  listed = [n for group in listed for n in group.split(",")]
  listed += re.findall(r"`prompt_tuning/([a-z_]+)(?:\.py|/)`", section)
  gone = [n for n in listed if n not in names]
  assert listed and not gone, f"README layout table lists modules that do not exist: {gone}"
