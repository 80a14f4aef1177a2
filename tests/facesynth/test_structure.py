"""The layers import one way: facesynth (config) < morphable < render < datagen < coarse < training <
reconstruct. Every import statement of every module (module-level and inside functions) is read with ``ast``;
a package may import only packages below it."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("facesynth", "morphable", "render", "datagen", "coarse", "training", "reconstruct")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _imports(path: Path, package: str) -> list[tuple[str, int]]:
    """(imported top-level package, line) for each import in ``path`` of a layer package (others left out)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the package itself (the layers are top-level packages)
                names = [package]
            else:
                names = [node.module or ""]
        else:
            continue
        found += [(n.split(".")[0], node.lineno) for n in names if n.split(".")[0] in RANK]
    return sorted(found, key=lambda t: t[1])


def import_edges() -> list[tuple[str, str, str]]:
    """(importing package, imported package, "file:line") for every import between two layer packages."""
    edges = []
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            for target, line in _imports(path, package):
                if target != package:
                    edges.append((package, target, f"{path.relative_to(REPO)}:{line}"))
    return edges


def _cycle(edges: list[tuple[str, str, str]]) -> list[str] | None:
    graph: dict[str, set[str]] = {p: set() for p in LAYERS}
    for a, b, _ in edges:
        graph[a].add(b)
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for p in LAYERS:
        if p not in state:
            found = visit(p, [])
            if found:
                return found
    return None


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom . import x\n\ndef g():\n    from training.loop import a\n    import render.camera\n")
    assert _imports(f, "datagen") == [("datagen", 2), ("training", 5), ("render", 6)]


def test_no_cycle_between_packages():
    edges = import_edges()
    cycle = _cycle(edges)
    assert cycle is None, "import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(
        where for a, b, where in edges if (a, b) in set(zip(cycle, cycle[1:])))


def test_no_package_imports_a_higher_one():
    upward = [f"{where}: {a} imports {b}" for a, b, where in import_edges() if RANK[b] > RANK[a]]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_config_layer_imports_no_stage():
    stages = [f"{where}: imports {b}" for a, b, where in import_edges() if a == "facesynth"]
    assert not stages, "\n".join(stages)
