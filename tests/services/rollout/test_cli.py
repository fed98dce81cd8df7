"""`vineppo serve rollout` as a real subprocess, queried with `vineppo value`; the prompt
`vineppo value --question` sends (the model's chat template, as the trainer formats it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.rollout.cli import value_prompt
from shared.prompts import INSTRUCTIONS, format_prompt, plain_prompt
from tests.services.rollout.conftest import PROMPT
from tests.support import free_port

pytestmark = pytest.mark.server


def _wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("rollout server did not become healthy")


def test_serve_rollout_and_value_cli(
    trained_model_dir: Path, reward_url: str, tmp_path: Path
) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "rollout",
        "--model",
        str(trained_model_dir),
        "--port",
        str(port),
        "--reward-url",
        reward_url,
    ]
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        args = [
            "value",
            "--url",
            url,
            "--prompt",
            PROMPT,
            "--partial",
            "Tom starts with 3",
            "--gold",
            "7",
            "--k",
            "4",
            "--temperature",
            "0.5",
            "--max-tokens",
            "48",
            "--seed",
            "0",
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["values"][0]["value"] == 1.0 and len(body["values"][0]["returns"]) == 4
        bad = CliRunner().invoke(app, [*args[:-6], "--k", "4", "--dataset", "aime"])
        assert bad.exit_code == 1 and json.loads(bad.output)["error"] == "validation_error"
        # the question, formatted for the model (no chat template: PROMPT's plain format)
        question = PROMPT.removeprefix("Question: ").removesuffix("\nAnswer:\n")
        asked = [
            "value",
            "--url",
            url,
            "--question",
            question,
            "--model",
            str(trained_model_dir),
            *args[5:],
        ]
        result = CliRunner().invoke(app, asked)
        assert result.exit_code == 0, result.output
        again = json.loads(result.output)["values"][0]  # the same seeded state: a cache hit
        assert again["returns"] == body["values"][0]["returns"] and again["cached"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_rollout_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["serve", "rollout", "--help"])
    assert result.exit_code == 0 and "--engine" in result.output


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_value_question_gets_the_chat_template_of_a_chat_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`vineppo value --question Q --model DIR` sends what the trainer sends for Q
    (``shared.prompts``): the chat template for a chat model (before, only a raw --prompt
    existed, so a chat model got none), the plain format otherwise; --prompt goes as it is."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = CHAT_TEMPLATE
    chat_dir = tmp_path / "chat"
    tok.save_pretrained(str(chat_dir))
    got = value_prompt("What is 2+2?", str(chat_dir), None, "math")
    assert got == format_prompt("What is 2+2?", style="chat", dataset="math", tokenizer=tok)
    assert got == f"<|user|>{INSTRUCTIONS['math']}\n\nWhat is 2+2?\n<|assistant|>"
    assert value_prompt("What is 2+2?", str(tiny_model_dir), None, "gsm8k") == plain_prompt(
        "What is 2+2?"
    )
    assert value_prompt(None, None, "raw\ntext", "gsm8k") == "raw\ntext"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "exactly one of --question"),
        (["--question", "q", "--prompt", "p"], "exactly one of --question"),
        (["--question", "q"], "--question needs --model"),
        (["--question", "q", "--model", "/no/such/model"], "does not exist"),
    ],
)
def test_value_prompt_options_are_one_line_errors(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["value", "--gold", "7", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
