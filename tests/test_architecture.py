"""The import graph of ``shared/`` and ``services/``: no cycles, and no module importing a
higher layer (docs/architecture.md draws the layers).

The graph is read with ``ast`` from the source, so an import inside a function counts as
much as one at the top of a module (a circle closed by a lazy import still ties the modules
together). An edge goes to the deepest project module an import names:
``from services.trainer.rl import loop`` is an edge to ``services.trainer.rl.loop``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, ...]] = [
    ("shared",),
    ("services.cli_errors",),
    ("services.reward",),
    ("services.rollout",),
    ("services.trainer",),
    ("services.cli", "services.demo"),
]
"""From the bottom up: a module may import its own layer (without a cycle) and lower ones."""

TRAINER_ROOMS: list[tuple[str, ...]] = [
    ("overrides",),
    ("algos", "config", "settings"),
    ("runtime", "data"),
    ("client",),
    ("evaluation", "sft"),
    ("rl", "baselines"),
    ("cli",),
]
"""The trainer's packages from the bottom up: an import from one room into another must go to
a lower row; rooms of one row do not import each other."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(
    root: Path = ROOT, tops: tuple[str, ...] = ("shared", "services")
) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    files = {module_name(p, root): p for top in tops for p in (root / top).rglob("*.py")}

    def project_module(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([base] if base else [])])
                # `from pkg import sub` names the submodule; `from mod import f` the module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                         for a in node.names]  # fmt: skip
            else:
                continue
            targets |= {t for n in names if (t := project_module(n)) is not None}
        graph[mod] = targets - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path: list[str] = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def rank(module: str, layers: list[tuple[str, ...]], prefix: str = "") -> int | None:
    for i, row in enumerate(layers):
        if any(module == f"{prefix}{p}" or module.startswith(f"{prefix}{p}.") for p in row):
            return i
    return None


def room(module: str) -> str | None:
    """``services.trainer.rl.loop`` -> ``rl``; None outside the trainer's rooms."""
    if rank(module, TRAINER_ROOMS, "services.trainer.") is None:
        return None
    return module.removeprefix("services.trainer.").split(".")[0]


GRAPH = import_graph()


def test_the_graph_is_read() -> None:
    # a few edges everyone knows: the graph is not empty by mistake
    assert "services.trainer.rl.loop" in GRAPH["services.trainer.cli.train"]
    assert "shared.schemas" in GRAPH["services.rollout.worker"]
    assert len(GRAPH) > 60


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for mod, targets in sorted(GRAPH.items()):
        here = rank(mod, LAYERS)
        if here is None:  # the `services` package itself
            assert mod == "services", f"{mod} is in no layer: add it to LAYERS"
            continue
        for t in sorted(targets):
            there = rank(t, LAYERS)
            if there is not None and there > here:
                bad.append(f"{mod} -> {t}")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_trainer_rooms_import_only_lower_rooms() -> None:
    bad = []
    for mod, targets in sorted(GRAPH.items()):
        src = room(mod)
        if src is None:
            if mod.startswith("services.trainer."):
                pytest.fail(f"{mod} is in no room of the trainer: add it to TRAINER_ROOMS")
            continue
        for t in sorted(targets):
            dst = room(t)
            if dst is None or dst == src:
                continue
            src_rank = rank(mod, TRAINER_ROOMS, "services.trainer.")
            dst_rank = rank(t, TRAINER_ROOMS, "services.trainer.")
            assert src_rank is not None and dst_rank is not None
            if dst_rank >= src_rank:
                bad.append(f"{mod} ({src}) -> {t} ({dst})")
    assert not bad, "imports of a room at the same or a higher row:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),  # a chain
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),  # two modules
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),  # behind an acyclic start
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),  # a diamond is no cycle
    ],
)
def test_find_cycle_on_hand_graphs(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_imports_inside_functions_and_relative_ones_count(tmp_path: Path) -> None:
    # the circles this file guards against were closed by imports inside functions
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
