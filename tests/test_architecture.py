"""The import graph of ``shared/``, ``services/``, ``bench/`` and ``scripts/`` against the
rules docs/architecture.md states (its section "What tests/test_architecture.py enforces"):

1. no import cycles;
2. layers (``LAYERS``): no module imports a higher layer;
3. the trainer's rooms (``TRAINER_ROOMS``): a room imports only rooms of lower rows;
4. crossings (``CROSSINGS``): what the trainer may import of the reward and rollout services,
   what rollout may import of reward, and the rollout engine package importing no other
   module of ``services``;
5. in-process starters (``STARTERS``): which modules import uvicorn or call the functions that
   start a service inside the calling process.

How the graph is read and each rule judged is ``tests/import_graph.py``; each check there is
a function of a graph (or of the imported names), so the tests at the bottom show it
reporting a hand-made violation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import (
    Crossing,
    all_imported_names,
    crossing_violations,
    find_cycle,
    import_graph,
    layer_violations,
    room_violations,
    starter_uses,
    starter_violations,
)

LAYERS: list[tuple[str, ...]] = [
    ("shared",),
    ("services.cli_errors",),
    ("services.reward",),
    ("services.rollout",),
    ("services.trainer",),
    ("services.cli", "services.demo"),
    ("bench", "scripts"),
]
"""From the bottom up: a module may import its own layer (without a cycle) and lower ones."""

TRAINER_ROOMS: list[tuple[str, ...]] = [
    ("overrides",),
    ("presets",),
    ("algos", "config", "settings"),
    ("runtime", "data"),
    ("client",),
    ("evaluation", "sft"),
    ("rl", "baselines"),
    ("cli",),
]
"""The trainer's packages from the bottom up: an import from one room into another must go to
a lower row; rooms of one row do not import each other."""


LOCAL_SERVICES = "services.trainer.client.local_services"

CROSSINGS: list[Crossing] = [
    Crossing(
        "services.trainer", "services.reward",
        allowed=frozenset({"services.reward.client"}),
        also={
            LOCAL_SERVICES: frozenset({"services.reward.app", "services.reward.settings"}),
            "services.trainer.sft.train": frozenset({"services.reward.grading"}),
        },
        why="the trainer grades through the reward client; only the launcher of local "
        "services builds the reward app, and SFT validation calls grading.grade in process",
    ),
    Crossing(
        "services.trainer", "services.rollout",
        also={LOCAL_SERVICES: frozenset({"services.rollout.engine", "services.rollout.worker"})},
        why="the trainer reaches rollout replicas through the work queue (shared.queue); only "
        "the launcher of local services builds engines (make_engine) and runs workers",
    ),
    Crossing(
        "services.rollout", "services.reward",
        allowed=frozenset({"services.reward.client"}),
        why="a replica grades its MC continuations through the reward service's client",
    ),
    Crossing(
        "services.rollout.engine", "services",
        why="the engines import only shared and their own package",
    ),
]  # fmt: skip
"""Who may import what across a service's boundary (the layers allow more)."""

STARTERS: frozenset[str] = frozenset({
    "uvicorn",
    "shared.serve.run",
    "shared.serve.serve_in_thread",
    "services.rollout.worker.run_worker",
    "services.rollout.worker.RolloutWorker",
    "services.rollout.replica.run_replica",
    "services.rollout.replica.start_worker",
    f"{LOCAL_SERVICES}.run_services",
    "tests.support.serve_app",
    "tests.fuzz_support.fuzz_stack",
})  # fmt: skip
"""What starts a service inside the calling process: uvicorn itself, serving an app
(foreground or a loopback thread), running a rollout queue worker, the trainer's launcher of
local services, and the test helpers that wrap them (which bench scripts reuse)."""

MAY_START: dict[str, str] = {
    "shared.serve": "runs an app under uvicorn (the one module importing uvicorn)",
    "services.reward.cli": "vineppo serve reward",
    "services.rollout.cli": "vineppo serve rollout (HTTP API, or --worker-only)",
    "services.rollout.app": "the rollout app's lifespan starts its queue worker",
    "services.rollout.replica": "builds a replica's queue worker",
    LOCAL_SERVICES: "the trainer's launcher: reward app on loopback, in-process replicas",
    "services.trainer.cli.train": "vineppo train without URLs",
    "services.trainer.evaluation.runs": "evaluating a checkpoint on local services",
    "services.demo.run": "the demo",
    "bench.critic_fit": "benchmark on local services",
    "bench.real_gsm8k": "benchmark on local services",
    "bench.fuzz": "fuzzes real servers on loopback",
    "bench.value_cache": "times the value cache through real servers on loopback",
}
"""The modules that may start services in process, each with the reason."""


GRAPH = import_graph()
NAMES = all_imported_names()


def test_the_graph_is_read() -> None:
    # a few edges everyone knows: the graph is not empty by mistake
    assert "services.trainer.rl.loop" in GRAPH["services.trainer.cli.train"]
    assert "shared.schemas" in GRAPH["services.rollout.worker"]
    assert "bench.soak_stack" in GRAPH["bench.soak"]
    assert "shared.steps" in GRAPH["scripts.step_stats"]
    assert len(GRAPH) > 60


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_a_higher_layer() -> None:
    bad = layer_violations(GRAPH, LAYERS)
    assert not bad, "imports of a higher layer (or modules in none: add to LAYERS):\n" + (
        "\n".join(bad)
    )


def test_trainer_rooms_import_only_lower_rooms() -> None:
    bad = room_violations(GRAPH, TRAINER_ROOMS, "services.trainer.")
    assert not bad, "imports of a room at the same or a higher row (or modules in no room: " + (
        "add to TRAINER_ROOMS):\n" + "\n".join(bad)
    )


def test_crossings_between_services() -> None:
    bad = crossing_violations(GRAPH, CROSSINGS)
    assert not bad, "imports across a service boundary not allowed by CROSSINGS:\n" + (
        "\n".join(bad)
    )


def test_only_the_listed_modules_start_services_in_process() -> None:
    bad = starter_violations(starter_uses(NAMES, STARTERS), MAY_START)
    assert not bad, "modules starting services in process, not in MAY_START:\n" + "\n".join(bad)


def test_the_allow_lists_name_modules_that_exist_and_are_used() -> None:
    # a rename must not leave a dead entry that would let the next module through
    uses = starter_uses(NAMES, STARTERS)
    assert sorted(set(MAY_START) - set(uses)) == []
    named = {m for c in CROSSINGS for m in [*c.allowed, *c.also]}
    named |= {t for c in CROSSINGS for ts in c.also.values() for t in ts}
    assert sorted(m for m in named if m not in GRAPH) == []


# -- each check reports a hand-made violation -------------------------------------------


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


def test_a_type_only_import_closes_a_circle(tmp_path: Path) -> None:
    # bench/soak.py <-> bench/soak_report.py was closed this way
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "soak.py").write_text("from bench.soak_report import build_report\n")
    (bench / "soak_report.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bench.soak import Soak\n"
    )
    graph = import_graph(tmp_path, ("bench",))
    assert find_cycle(graph) == ["bench.soak", "bench.soak_report", "bench.soak"]


def test_layer_violations_on_hand_graphs() -> None:
    graph = {
        "shared.queue": {"bench.soak"},  # shared reaching up to a bench script
        "services.rollout.worker": {"services.trainer.rl.loop"},  # rollout into the trainer
        "bench.soak": {"services.demo.run", "shared.queue"},  # the top layer: fine
        "services.demo.run": {"scripts.step_stats"},  # the demo into a script
        "tools.x": set(),  # in no layer
    }
    assert layer_violations(graph, LAYERS) == [
        "services.demo.run -> scripts.step_stats",
        "services.rollout.worker -> services.trainer.rl.loop",
        "shared.queue -> bench.soak",
        "tools.x: in no layer",
    ]


def test_room_violations_on_hand_graphs() -> None:
    p = "services.trainer."
    graph = {
        f"{p}client.jobs": {f"{p}rl.loop", f"{p}runtime.model", f"{p}client.weights"},
        f"{p}rl.loop": {f"{p}baselines.common", f"{p}algos.states"},  # one row
        f"{p}attic.old": set(),
    }
    assert room_violations(graph, TRAINER_ROOMS, p) == [
        f"{p}attic.old: in no room",
        f"{p}client.jobs (client) -> {p}rl.loop (rl)",
        f"{p}rl.loop (rl) -> {p}baselines.common (baselines)",
    ]


def test_crossing_violations_on_hand_graphs() -> None:
    graph = {
        # the trainer into engine and grading internals
        "services.trainer.rl.loop": {
            "services.rollout.engine.torch_engine",
            "services.rollout.worker",  # the launcher's exception is not everyone's
            "services.reward.grading",
            "services.reward.client",  # allowed to all
            "shared.queue",
        },
        LOCAL_SERVICES: {
            "services.rollout.worker",
            "services.rollout.engine",
            "services.reward.app",
            "services.reward.sandbox",
        },
        "services.rollout.values": {"services.reward.grading", "services.reward.client"},
        "services.rollout.engine.base": {"services.rollout.settings", "shared.settings"},
        "services.rollout.engine.torch_engine": {"services.rollout.engine.base"},
        "services.rollout.engine": {"services.reward.client"},
    }
    assert crossing_violations(graph, CROSSINGS) == [
        f"{LOCAL_SERVICES} -> services.reward.sandbox (services.trainer may not import it)",
        "services.trainer.rl.loop -> services.reward.grading (services.trainer may not import it)",
        "services.trainer.rl.loop -> services.rollout.engine.torch_engine (services.trainer "
        "may not import it)",
        "services.trainer.rl.loop -> services.rollout.worker (services.trainer may not import it)",
        "services.rollout.values -> services.reward.grading (services.rollout may not import it)",
        "services.rollout.engine -> services.reward.client (services.rollout.engine may not "
        "import it)",
        "services.rollout.engine.base -> services.rollout.settings (services.rollout.engine "
        "may not import it)",
    ]


def test_starter_violations_on_a_hand_made_package(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "serve.py").write_text("def run(app):\n    import uvicorn.config\n")
    (pkg / "launcher.py").write_text("from .serve import run\n")  # allowed below
    (pkg / "sneaky.py").write_text("def f():\n    from pkg import serve\n    serve.run(1)\n")
    (pkg / "quiet.py").write_text("from pkg.serve import free_port\n")  # not a starter
    names = all_imported_names(tmp_path, ("pkg",))
    uses = starter_uses(names, frozenset({"uvicorn", "pkg.serve.run"}))
    assert uses == {
        "pkg.serve": {"uvicorn"},
        "pkg.launcher": {"pkg.serve.run"},
        "pkg.sneaky": {"pkg.serve.run"},
    }
    allowed = {"pkg.serve": "serves", "pkg.launcher": "launches"}
    assert starter_violations(uses, allowed) == ["pkg.sneaky imports pkg.serve.run"]
