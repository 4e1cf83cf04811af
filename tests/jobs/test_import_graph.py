"""The modules of ``service.jobs`` import each other one way: the import graph has no cycle.

Every import counts, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``): a function-local import hides a cycle from Python, not from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import service.jobs

PACKAGE = "service.jobs"
ROOT = Path(service.jobs.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The ``service.jobs`` modules that ``path`` (module ``name``) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                module = f"{anchor}.{node.module}" if node.module else anchor
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `service.jobs.tasks.registry.x` -> its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_the_modules_and_their_imports():
    graph = _graph()
    assert {"service.jobs.dispatch", "service.jobs.runner", "service.jobs.worker"} <= set(graph)
    assert "service.jobs.bootstrap" in graph["service.jobs.worker"]
    assert "service.jobs.runner" in graph["service.jobs.bootstrap"]
    assert "service.jobs.tasks.registry" in graph["service.jobs.tasks.recovery"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_service_jobs_imports_have_no_cycle():
    assert _cycle(_graph()) is None


def test_runner_and_dispatch_do_not_know_each_other_or_the_worker():
    graph = _graph()
    for low in ("service.jobs.runner", "service.jobs.dispatch"):
        others = {
            "service.jobs.dispatch",
            "service.jobs.runner",
            "service.jobs.worker",
            "service.jobs.bootstrap",
        }
        assert not graph[low] & others, (low, graph[low] & others)
