"""`vineppo` as a real subprocess: what a user can fix is ONE line naming the field, exit
status 2, never a traceback (services/cli_errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def vineppo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line of a failed run (and checks there is nothing else)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("content", "name", "needles"),
    [
        (None, "missing.yaml", ["missing.yaml", "No such file"]),
        ("algo: [unclosed\n", "bad.yaml", ["malformed YAML", "line 2"]),
        ("ppo:\n  epochs: many\n", "bad-value.yaml", ["ppo.epochs", "valid integer"]),
        ('{"ppo": {"epochs": 2,}}', "bad.json", ["malformed JSON", "line 1"]),
    ],
)
def test_bad_config_file_is_one_line_naming_it(
    tmp_path: Path, content: str | None, name: str, needles: list[str]
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    line = one_line_error(vineppo("train", "--config", str(path), "--output-dir", str(tmp_path)))
    assert proc_stderr_is_only(line)
    for needle in needles:
        assert needle in line, line


def proc_stderr_is_only(line: str) -> bool:
    return "\n" not in line and line.startswith("Error: ")


def test_bad_environment_value_names_the_variable() -> None:
    proc = vineppo("serve", "reward", env={"VINEPPO_REWARD_PORT": "eighty"})
    line = one_line_error(proc)
    assert "VINEPPO_REWARD_PORT" in line and "integer" in line
    assert proc.stderr.strip() == line  # nothing else printed


def test_short_token_names_the_variable_and_never_echoes_it(tmp_path: Path) -> None:
    proc = vineppo(
        "serve", "rollout", "--model", str(tmp_path), env={"VINEPPO_ROLLOUT_API_TOKEN": "hunter2"}
    )
    line = one_line_error(proc)
    assert "VINEPPO_ROLLOUT_API_TOKEN" in line and "16 characters" in line
    assert "hunter2" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("value", "needle"), [("", "empty model path"), ("/no/such/dir", "does not exist")]
)
def test_empty_or_missing_model_path_names_the_option(value: str, needle: str) -> None:
    line = one_line_error(vineppo("serve", "rollout", "--model", value))
    assert "--model" in line and needle in line


def test_model_dir_that_cannot_load_exits_with_the_reason(tmp_path: Path) -> None:
    """Not a model directory: the server stops (no process left up, unready) and says why."""
    (tmp_path / "README").write_text("not a model")
    proc = vineppo("serve", "rollout", "--model", str(tmp_path), "--port", "0")
    line = one_line_error(proc)
    assert "--model" in line and "could not load" in line


@pytest.mark.parametrize(
    ("args", "option", "needle"),
    [
        (["--k", "0"], "'--k'", "greater than or equal to 1"),
        (["--k", "many"], "'--k'", "valid integer"),
        (["--temperature", "-1"], "'--temperature'", "greater than or equal to 0"),
    ],
)
def test_bad_option_value_is_one_line_naming_the_option(
    args: list[str], option: str, needle: str
) -> None:
    """Typer checks option types and ranges with pydantic; its error alone named a
    "constrained-int.(whole model)", not the option (before: `vineppo value --k 0` said
    ``invalid setting: constrained-int.(whole model): Input should be ...``)."""
    proc = vineppo("value", "--prompt", "Question: 1 + 1?\nAnswer:\n", "--gold", "2", *args)
    line = one_line_error(proc)
    assert option in line and needle in line, line
    assert "constrained" not in line and "whole model" not in line, line
    assert proc.stderr.strip() == line  # no usage text, no traceback
