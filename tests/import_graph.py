"""Reading a tree's import graph and judging it against layer, room, crossing and starter
rules: the machinery of ``tests/test_architecture.py`` (which holds this project's rules).

The graph is read with ``ast`` from the source, so an import inside a function counts as
much as one at the top of a module (a circle closed by a lazy import, or by one under
``TYPE_CHECKING``, still ties the modules together). An edge goes to the deepest project
module an import names: ``from services.trainer.rl import loop`` is an edge to
``services.trainer.rl.loop``. Each check is a function of a graph (or of the imported names),
so tests can show it reporting a hand-made violation.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("shared", "services", "bench", "scripts")


@dataclass(frozen=True)
class Crossing:
    """Modules under ``src`` may import, of the modules under ``dst`` (outside ``src``), only
    those in ``allowed``; a module named in ``also`` may import its further modules too."""

    src: str
    dst: str
    allowed: frozenset[str] = frozenset()
    also: Mapping[str, frozenset[str]] = field(default_factory=dict)
    why: str = ""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_files(root: Path = ROOT, tops: tuple[str, ...] = TOPS) -> dict[str, Path]:
    return {module_name(p, root): p for top in tops for p in (root / top).rglob("*.py")}


def imported_names(path: Path, mod: str) -> set[str]:
    """Every dotted name the module imports, anywhere in its body: ``import a.b`` -> ``a.b``,
    ``from a import b`` -> ``a.b`` (relative imports resolved against the module's package)."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def import_graph(root: Path = ROOT, tops: tuple[str, ...] = TOPS) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    files = module_files(root, tops)

    def project_module(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        targets = {t for n in imported_names(path, mod) if (t := project_module(n)) is not None}
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


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def rank(module: str, layers: list[tuple[str, ...]], prefix: str = "") -> int | None:
    for i, row in enumerate(layers):
        if any(under(module, f"{prefix}{p}") for p in row):
            return i
    return None


def layer_violations(graph: dict[str, set[str]], layers: list[tuple[str, ...]]) -> list[str]:
    """``a -> b`` for each import of a higher layer; ``a: in no layer`` for a module outside
    them all (the ``services`` package itself excepted)."""
    bad = []
    for mod, targets in sorted(graph.items()):
        here = rank(mod, layers)
        if here is None:
            if mod != "services":
                bad.append(f"{mod}: in no layer")
            continue
        for t in sorted(targets):
            there = rank(t, layers)
            if there is not None and there > here:
                bad.append(f"{mod} -> {t}")
    return bad


def room_violations(
    graph: dict[str, set[str]], rooms: list[tuple[str, ...]], prefix: str
) -> list[str]:
    """``a (r) -> b (s)`` for each import from room r into a room s of the same or a higher
    row; ``a: in no room`` for a module under ``prefix`` outside every room."""
    bad = []
    for mod, targets in sorted(graph.items()):
        if not mod.startswith(prefix):
            continue
        src_rank = rank(mod, rooms, prefix)
        if src_rank is None:
            bad.append(f"{mod}: in no room")
            continue
        src = mod.removeprefix(prefix).split(".")[0]
        for t in sorted(targets):
            dst_rank = rank(t, rooms, prefix)
            dst = t.removeprefix(prefix).split(".")[0]
            if dst_rank is None or dst == src:
                continue
            if dst_rank >= src_rank:
                bad.append(f"{mod} ({src}) -> {t} ({dst})")
    return bad


def crossing_violations(graph: dict[str, set[str]], crossings: list[Crossing]) -> list[str]:
    """``a -> b`` for each import across a crossing's boundary that it does not allow."""
    bad = []
    for c in crossings:
        for mod, targets in sorted(graph.items()):
            if not under(mod, c.src):
                continue
            ok = c.allowed | c.also.get(mod, frozenset())
            for t in sorted(targets):
                if under(t, c.dst) and not under(t, c.src) and t not in ok:
                    bad.append(f"{mod} -> {t} ({c.src} may not import it)")
    return bad


def starter_uses(names: Mapping[str, set[str]], starters: frozenset[str]) -> dict[str, set[str]]:
    """module -> the starters it imports: the name itself, something inside it
    (``uvicorn.config``), or the module that holds it (``from shared import serve``)."""
    uses: dict[str, set[str]] = {}
    for mod, imported in names.items():
        hit = {
            s
            for s in starters
            for n in imported
            if n == s or n.startswith(f"{s}.") or s.startswith(f"{n}.")
        }
        if hit:
            uses[mod] = hit
    return uses


def starter_violations(uses: Mapping[str, set[str]], may_start: Mapping[str, str]) -> list[str]:
    return [
        f"{mod} imports {', '.join(sorted(s))}"
        for mod, s in sorted(uses.items())
        if mod not in may_start
    ]


def all_imported_names(root: Path = ROOT, tops: tuple[str, ...] = TOPS) -> dict[str, set[str]]:
    return {mod: imported_names(path, mod) for mod, path in module_files(root, tops).items()}
