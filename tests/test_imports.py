"""No import circle between fm's modules, nor between its top-level packages and modules.

Every import statement is read from the source (AST), function-level ones
included, so a circle hidden behind a lazy import is still found.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fm")


def _modules() -> dict[str, str]:
  """{dotted module name: file}; a package is named by its __init__.py."""
  out = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, name), os.path.dirname(ROOT))[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(directory, name)
  return out


def _imports(module: str, path: str, known) -> set[str]:
  """fm modules that `module` imports, with the packages that importing them executes."""
  tree = ast.parse(open(path).read(), path)
  is_package = path.endswith("__init__.py")
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        prefix = ".".join(base + ([node.module] if node.module else []))
      else:
        prefix = node.module
      for a in node.names:
        found.add(f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix)
  out = set()
  for name in found:
    while name and name not in known:   # `import fm.x.attr`: the module part
      name = name.rpartition(".")[0]
    if not name or not name.startswith("fm"):
      continue
    out.add(name)
    parts = name.split(".")
    for i in range(1, len(parts)):   # parent packages run first, unless they are the importer's own
      parent = ".".join(parts[:i])
      if not (module == parent or module.startswith(parent + ".")):
        out.add(parent)
  out.discard(module)
  return out


def _graph():
  known = _modules()
  return {m: _imports(m, p, known) for m, p in known.items()}


def _cycle(graph: dict[str, set[str]]):
  """One cycle as a list of nodes, or None."""
  color, stack = {}, []

  def visit(node):
    color[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if color.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in color:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    color[node] = 2
    return None

  for node in sorted(graph):
    if node not in color:
      found = visit(node)
      if found:
        return found
  return None


def _top(module: str) -> str:
  """fm.train.loop -> fm.train; fm.recipe -> fm.recipe; fm -> fm."""
  return ".".join(module.split(".")[:2])


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
  known = {"fm", "fm.a", "fm.b", "fm.p", "fm.p.c", "fm.p.d"}
  src = tmp_path / "c.py"
  src.write_text("def f():\n  from fm import a\n  from . import d\n  import fm.b.attr\n")
  assert _imports("fm.p.c", str(src), known) == {"fm.a", "fm.b", "fm.p.d"}
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_cycle():
  graph = _graph()
  assert "fm.recipe" in graph["fm.evaluate.toy"]   # the graph is the real one
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_package_cycle():
  graph = {}
  for module, deps in _graph().items():
    graph.setdefault(_top(module), set()).update(_top(d) for d in deps if _top(d) != _top(module))
  cycle = _cycle(graph)
  assert cycle is None, "package import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", ["fm.train.loop", "fm.train"])
def test_the_trainer_imports_no_evaluator(module):
  deps = _graph()[module]
  assert not [d for d in deps if d.startswith("fm.evaluate") or d in ("fm.recipe", "fm.experiment")]
