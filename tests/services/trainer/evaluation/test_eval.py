"""`vineppo eval`: Pass@1 with its spread over seeds through the real services, checkpoint
selection by validation accuracy, and the sweep plan."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.trainer.cli.eval import sweep_plan
from services.trainer.config import load_config
from services.trainer.evaluation.evaluate import pass_at_1
from services.trainer.evaluation.runs import select_checkpoint
from shared.schemas.grade import Verdict

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.services.trainer.tiny_sft import tiny_sft_model

    return tiny_sft_model(tmp_path_factory)


def _fake_run(root: Path, accs: dict[int, float], policies: list[int], best: int | None) -> Path:
    sft = root / "sft"
    sft.mkdir(parents=True)
    cfg = load_config(preset="tiny-cpu", overrides=[f"model.policy={sft}"])
    (root / "config.json").write_text(cfg.model_dump_json())
    rows = [{"iteration": v, "version": v, "acc/val": a} for v, a in accs.items()]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for v in policies:
        (root / "policies" / f"policy-v{v}").mkdir(parents=True)
    if best is not None:
        (root / "best").mkdir()
        (root / "best" / "best.json").write_text(
            json.dumps({"version": best, "acc/val": accs[best]})
        )
    return root


def test_select_prefers_best_dir_then_falls_back_to_what_exists(tmp_path: Path) -> None:
    accs = {0: 0.2, 5: 0.6, 10: 0.5, 15: 0.4}
    run = _fake_run(tmp_path / "a", accs, policies=[14, 15], best=5)
    sel = select_checkpoint(run)
    assert (sel["version"], sel["path"], sel["best_is_available"]) == (5, str(run / "best"), True)
    # without best/ the validated v5 is gone: choose among v15 and the SFT model (v0)
    run = _fake_run(tmp_path / "b", accs, policies=[14, 15], best=None)
    sel = select_checkpoint(run)
    assert sel["version"] == 15 and sel["best_validated_version"] == 5
    assert not sel["best_is_available"] and sel["candidates"] == {"0": 0.2, "15": 0.4}


def test_sweep_plan_and_dry_run(tmp_path: Path) -> None:
    plan = sweep_plan(
        "k", ["1", "3"], tmp_path, algo="vine", preset="tiny-cpu", sets=["iterations=2"]
    )
    assert [n for n, _ in plan] == ["k-1", "k-3"]
    argv = plan[1][1]
    assert argv[argv.index("--output-dir") + 1] == str(tmp_path / "k-3")
    assert "vine.k=3" in argv and "iterations=2" in argv
    res = runner.invoke(
        app, ["sweep", "--temperature", "0.6,1.0", "--dry-run", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0 and "rollout.temperature=1.0" in res.output
    assert runner.invoke(app, ["sweep", "--dry-run"]).exit_code == 2  # neither --k nor --temp


def test_eval_rejects_bad_input(tmp_path: Path) -> None:
    res = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path)])
    assert res.exit_code == 2 and "not a model directory" in res.output
    res = runner.invoke(app, ["eval", "--run", str(tmp_path)])
    assert res.exit_code == 2 and "config.json" in res.output


@pytest.mark.slow
@pytest.mark.server
def test_eval_of_a_tiny_sft_model_reports_pass_at_1_with_spread(
    tiny_sft: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(tiny_sft),
            "--split",
            "test",
            "--dataset",
            "arithmetic",
            "--seeds",
            "3",
            "--num-problems",
            "4",
            "--max-tokens",
            "40",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert len(doc["per_seed"]) == 3 and doc["num_problems"] == 4
    assert all(x in (0.0, 0.25, 0.5, 0.75, 1.0) for x in doc["per_seed"])  # 4 problems/seed
    assert doc["pass@1"] == pytest.approx(sum(doc["per_seed"]) / 3)
    assert doc["spread"] == pytest.approx(statistics.pstdev(doc["per_seed"]))
    assert 0.0 <= doc["stderr"] <= 0.5 / (4 - 1) ** 0.5  # sd of 4 per-problem means in [0, 1]
    assert "Pass@1" in res.output and "±" in res.output


@pytest.mark.server
def test_eval_engine_option_reaches_the_local_replicas_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vineppo eval --engine torch`: the local replicas are built with that kind (the real
    make_engine, watched), and the JSON and its command line name it (before, eval had no
    --engine: `auto` always)."""
    import services.rollout.engine as engine_mod
    from tests.services.rollout.tiny import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model", vocab_texts=["Question: 1 + 2 = 3\n#### 3"])
    kinds: list[str] = []
    real_make_engine = engine_mod.make_engine

    def make_engine(kind: str, model_dir: object, **kw: object) -> object:
        kinds.append(kind)
        return real_make_engine(kind, model_dir, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_mod, "make_engine", make_engine)
    monkeypatch.delenv("VINEPPO_TRAINER_ENGINE", raising=False)
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(model),
            "--dataset",
            "arithmetic",
            "--seeds",
            "1",
            "--num-problems",
            "1",
            "--max-tokens",
            "4",
            "--engine",
            "torch",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert kinds == ["torch"]
    doc = json.loads(out.read_text())
    assert doc["engine"] == "torch" and "--engine torch" in doc["command"]
    bad = runner.invoke(app, ["eval", "--checkpoint", str(model), "--engine", "tensorrt"])
    assert bad.exit_code == 2 and "'--engine'" in bad.output, bad.output


def test_pass_at_1_by_hand_with_standard_error_over_problems() -> None:
    def v(r: float) -> Verdict:
        return Verdict(reward=r, status="correct" if r else "incorrect")

    # 3 problems × 2 samples: per problem 1.0, 0.5, 0.0; per seed 2/3 and 1/3
    res = pass_at_1([[v(1), v(1)], [v(1), v(0)], [v(0), v(0)]])
    assert res.mean == pytest.approx(0.5)
    assert res.per_problem == [1.0, 0.5, 0.0]
    assert res.per_seed == pytest.approx([2 / 3, 1 / 3])
    assert res.stderr == pytest.approx(0.5 / 3**0.5)  # sample sd 0.5 over √3 problems
