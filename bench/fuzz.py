"""API fuzzing, the long run: the reward and rollout services from their OpenAPI schemas
(schemathesis + Hypothesis) against real uvicorn servers on 127.0.0.1, as in
``tests/services/test_api_fuzz.py`` but with more cases and time. Prints the numbers and
writes docs/benchmarks/fuzz.md.

    .venv/bin/python -m bench.fuzz                        # 90 s per service, ≤ 2000 cases each
    .venv/bin/python -m bench.fuzz --seconds 30 --examples 500 --seed 7

A finding is a response ≥ 500 (``GET /readyz`` answering 503 is its job) or a 4xx whose body
is not the typed ``ErrorBody``; the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz_support import FuzzReport, fuzz_api, fuzz_stack  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--seconds", type=float, default=90.0, help="Time budget per service.")
    p.add_argument("--examples", type=int, default=2000,
                   help="Most cases per operation and generation mode.")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random).")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "fuzz.md")
    return p.parse_args(argv)


def _table(reports: list[FuzzReport]) -> list[str]:
    lines = ["| service | operation | cases |", "|---|---|---|"]
    for r in reports:
        for label, n in sorted(r.calls.items()):
            lines.append(f"| {r.name} | `{label}` | {n} |")
    lines += ["", "| service | seconds | cases | cases/s | statuses | ≥ 500 | untyped 4xx |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in reports:
        n = sum(r.calls.values())
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(r.statuses.items()))
        lines.append(f"| {r.name} | {r.seconds:.1f} | {n} | {n / max(r.seconds, 1e-9):.1f} | "
                     f"{statuses} | {len(r.server_errors)} | {len(r.untyped)} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4))
    t0 = time.monotonic()
    reports: list[FuzzReport] = []
    with tempfile.TemporaryDirectory(prefix="vineppo-fuzz-") as d, fuzz_stack(Path(d)) as apis:
        for api in apis:
            r = fuzz_api(api, max_examples=args.examples, budget_s=args.seconds, seed=seed)
            reports.append(r)
            print(f"{r.name}: {sum(r.calls.values())} cases in {r.seconds:.1f}s, statuses "
                  f"{dict(sorted(r.statuses.items()))}, {len(r.server_errors)} ≥ 500, "
                  f"{len(r.untyped)} untyped")  # fmt: skip
    findings = [f for r in reports for f in r.server_errors + r.untyped]
    for f in findings:
        print("FINDING:", f)
    total = sum(sum(r.calls.values()) for r in reports)
    load = os.getloadavg()
    text = [
        "# API fuzzing (schemathesis, from the OpenAPI schemas)",
        "",
        f"Command: `.venv/bin/python -m bench.fuzz --seconds {args.seconds:g} "
        f"--examples {args.examples} --seed {seed}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f}, {load[1]:.1f}, "
        f"{load[2]:.1f} (shared machine).  ",
        f"Wall time {time.monotonic() - t0:.0f} s, {total} cases, **{len(findings)} finding(s)**.",
        "",
        "What runs: `tests/fuzz_support.py` starts the reward service (1 sandboxed grader, "
        "bearer token required) and the rollout service (a tiny Llama that writes EOS with "
        "p = 0.9, `max_items` 8, `max_k` 8, token required) under real uvicorn servers on "
        "127.0.0.1, reads each `/openapi.json`, and for every operation draws cases in "
        "schemathesis' positive (schema-valid) and negative (schema-violating) modes; positive "
        "cases are sometimes sent without the token. A finding is a status ≥ 500 (`GET /readyz` "
        "answering 503 is its job) or a 4xx whose body is not the typed `ErrorBody`.",
        "",
        *_table(reports),
        "",
        "Findings:" if findings else "No findings.",
        *[f"- `{f[:400]}`" for f in findings],
        "",
        "Found and fixed while this was written (both were 500s from `POST /v1/weights`, now "
        "a typed 400 `bad_path` after the token check; regression cases in "
        "`tests/services/test_api_fuzz.py`): a NUL byte in `path` or a shard name reached "
        "`os.path.realpath` (`ValueError`; found by the CI run), and a `path` of "
        "`~<unknown user>` reached `Path.expanduser` (`RuntimeError: Could not determine home "
        "directory`; found by a first 85 s-per-service run of this script, seed 1056612612, "
        "4 cases).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
