"""What the command a container runs actually reads: the Settings classes it instantiates and
the attribute names its code reads, found by walking the source (AST) from the CLI callback.

    closure(fn)   # functions reachable from fn: names it calls or passes on (module globals
                  # and imports inside functions), recursively within services/ and shared/;
                  # a project class it calls brings all its methods (and its project bases')

A Settings class that is only defined, or a field no reachable code reads, is dead config.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import typer

from shared.settings import ServiceSettings

PROJECT = ("services", "shared")


def callback(argv: tuple[str, ...]) -> Callable[..., Any]:
    """The Python function `vineppo <argv...>` runs."""
    from services.cli import app

    cmd: Any = typer.main.get_command(app)
    words = list(argv[1:])
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
        cmd, words = cmd.commands[words[0]], words[1:]
    fn: Callable[..., Any] = cmd.callback
    return inspect.unwrap(fn)


def _ours(obj: object) -> bool:
    return str(getattr(obj, "__module__", "")).split(".")[0] in PROJECT


def _local_imports(tree: ast.AST) -> dict[str, object]:
    out: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PROJECT:
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    out[alias.asname or alias.name] = getattr(module, alias.name)
    return out


def _tree(fn: Callable[..., Any]) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None


def closure(root: Callable[..., Any]) -> tuple[set[type], set[str]]:
    """(project classes called, attribute names read) over everything reachable from root."""
    seen: set[object] = set()
    classes: set[type] = set()
    attrs: set[str] = set()
    todo: list[Any] = [root]
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        tree = _tree(fn)
        if tree is None:
            continue
        names = dict(getattr(fn, "__globals__", {})) | _local_imports(tree)
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                attrs.add(node.attr)
            if not isinstance(node, ast.Name):
                continue  # a name called or passed on (asyncio.to_thread(build, settings))
            target = names.get(node.id)
            if inspect.isclass(target) and _ours(target) and id(node) in called:
                classes.add(target)
                for klass in target.__mro__:
                    if _ours(klass):
                        todo += [v for v in vars(klass).values() if inspect.isfunction(v)]
                        todo += [
                            v.__func__
                            for v in vars(klass).values()
                            if isinstance(v, (classmethod, staticmethod))
                        ]
            elif inspect.isfunction(target) and _ours(target):
                todo.append(target)
    return classes, attrs


def settings_read(argv: tuple[str, ...]) -> tuple[set[type[ServiceSettings]], set[str]]:
    """The Settings classes `vineppo <argv...>` instantiates, and the attribute names read."""
    classes, attrs = closure(callback(argv))
    found = {c for c in classes if issubclass(c, ServiceSettings) and c is not ServiceSettings}
    return found, attrs
