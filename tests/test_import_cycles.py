"""The package's module graph, read from the source with `ast` (nothing is imported): no import
cycle among detr_jax modules, no file over 400 lines, and the model / loss / matching code and the
training step free of TensorFlow and PyTorch at module level."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "detr_jax"
MAX_LINES = 400
HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "torchvision")


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py file under detr_jax/."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[: -len(".py")]
            parts = rel.split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = os.path.join(dirpath, f)
    return out


def _module_level_imports(tree: ast.Module):
    """Import statements run when the module is imported: module level, including inside
    if / try / with blocks, but not in functions or classes, nor under `if TYPE_CHECKING`."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test not in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                stack += node.body
            stack += node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                stack += handler.body
        elif isinstance(node, ast.With):
            stack += node.body


def _imported_names(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """Every module name `name` imports at module level (absolute; detr_jax ones resolved to
    the module actually loaded: `from detr_jax.x import y` is detr_jax.x.y if that is one)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = os.path.basename(path) == "__init__.py"
    out = set()
    for node in _module_level_imports(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
            continue
        if node.level:  # relative: from .x import y / from .. import y
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module
        out.add(target)
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in modules:
                out.add(sub)
    return out


def _graph() -> tuple[dict[str, str], dict[str, set[str]], dict[str, set[str]]]:
    """(modules, detr_jax edges, every imported top-level package per module)."""
    modules = _modules()
    edges, externals = {}, {}
    for name, path in modules.items():
        imported = _imported_names(name, path, modules)
        edges[name] = {m for m in imported if m in modules and m != name}
        externals[name] = {m.split(".")[0] for m in imported}
    return modules, edges, externals


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle (a list of modules, first == last) or None: depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_reader_sees_imports_and_cycles():
    """The checks below would see a cycle and resolve `from pkg import submodule`."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    _, edges, _ = _graph()
    assert "detr_jax.models.backbones" in edges["detr_jax.models"]
    assert "detr_jax.losses.criterion" in edges["detr_jax.losses"]
    assert "detr_jax.core.sharding" in edges["detr_jax.train"]  # from detr_jax.core import ...


def test_no_import_cycle_among_detr_jax_modules():
    _, edges, _ = _graph()
    cycle = _find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_400_lines():
    modules = _modules()
    long = {}
    for path in modules.values():
        with open(path) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[os.path.relpath(path, ROOT)] = n
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_models_losses_matching_and_train_step_import_no_tensorflow_or_torch():
    """Directly, and through the detr_jax modules they import at module level."""
    modules, edges, externals = _graph()
    roots = [m for m in modules if m.startswith(("detr_jax.models", "detr_jax.losses",
                                                  "detr_jax.matching"))] + ["detr_jax.train"]
    assert "detr_jax.models.backbones.resnet" in roots
    problems = []
    for root in roots:
        heavy = externals[root] & set(HEAVY)
        if heavy:
            problems.append(f"{root} imports {sorted(heavy)}")
        seen, todo, parent = {root}, [root], {root: None}
        while todo:
            node = todo.pop()
            for nxt in edges[node]:
                if nxt not in seen:
                    seen.add(nxt)
                    parent[nxt] = node
                    todo.append(nxt)
        for mod in sorted(seen - {root}):
            heavy = externals[mod] & set(HEAVY)
            if heavy:
                chain = [mod]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])
                problems.append(f"{' -> '.join(reversed(chain))} imports {sorted(heavy)}")
    assert not problems, "\n".join(problems)
