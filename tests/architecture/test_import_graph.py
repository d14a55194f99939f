"""The package's import graph has no circles, and every module imports.

Edges are read from the source (every ``import`` / ``from ... import``, including those inside
functions, which run later but still tie two modules together; not those under
``if TYPE_CHECKING:``). Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``: those
package edges count too, except the importer's own packages, which are already running.
"""
import ast
import importlib
import os

import megatron_hpt

PKG = "megatron_hpt"
ROOT = os.path.dirname(os.path.dirname(megatron_hpt.__file__))


def _modules():
    """name -> (path, is_package) for every module of the package."""
    out = {}
    for folder, _dirs, files in os.walk(os.path.join(ROOT, PKG)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                is_pkg = rel[-1] == "__init__"
                out[".".join(rel[:-1] if is_pkg else rel)] = (os.path.join(folder, f), is_pkg)
    return out


def _is_type_checking(node):
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree):
    """Import nodes of a module, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph():
    modules = _modules()
    graph = {}
    for name, (path, is_pkg) in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets |= {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules}
        edges = set()
        for t in targets:
            if t == PKG or t.startswith(PKG + "."):
                edges |= ({t} | _ancestors(t)) - _ancestors(name) - {name}
        graph[name] = sorted(e for e in edges if e in modules)
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    color, parent = {}, {}
    for start in sorted(graph):
        if color.get(start):
            continue
        stack = [(start, iter(graph[start]))]
        color[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = 2
                stack.pop()
            elif color.get(child) == 1:
                cycle = [child]
                for n, _ in reversed(stack):
                    cycle.append(n)
                    if n == child:
                        return cycle[::-1]
            elif not color.get(child):
                color[child], parent[child] = 1, node
                stack.append((child, iter(graph[child])))
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    # a function-level import: trainer_engine imports weights inside ``generate``
    assert "megatron_hpt.rollout.weights" in graph["megatron_hpt.rollout.trainer_engine"]
    # importing a submodule runs its package's __init__ (not the importer's own package)
    assert "megatron_hpt.loss" in graph["megatron_hpt.training.step"]
    assert "megatron_hpt.rollout" not in graph["megatron_hpt.rollout.engines"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports():
    failed = {}
    for name in sorted(_modules()):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - collect them all
            failed[name] = f"{type(e).__name__}: {e}"
    assert not failed, failed


def _reach(graph, start):
    seen, stack = set(), [start]
    while stack:
        for child in graph.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def test_rl_steps_stand_alone_below_the_front_door():
    """The RL task's steps (``training/rl/``, all but ``task.py``) reach neither ``arguments.py``
    nor the task: they read any object with the config's fields, so each can be tested alone
    (tests/training/rl/). ``arguments.py`` reads the RL task's flags and checks
    (``training/rl/config.py``) without loading the task."""
    graph = import_graph()
    task = f"{PKG}.training.rl.task"
    for name in graph:
        if name.startswith(f"{PKG}.training.rl.") and name != task:
            reached = _reach(graph, name)
            assert f"{PKG}.arguments" not in reached and task not in reached, name
    front = _reach(graph, f"{PKG}.arguments")
    assert f"{PKG}.training.rl.config" in front and task not in front
    assert f"{PKG}.training.step" not in front
