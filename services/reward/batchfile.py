"""Grade JSONL lines through the sandboxed pool (``vineppo grade``), one verdict per line."""

from __future__ import annotations

import json

from pydantic import ValidationError

from services.reward.sandbox import GraderPool
from shared.schemas import GradeItem, Verdict


def parse_line(line: str) -> GradeItem | Verdict:
    """A GradeItem, or an ``error`` verdict that says why the line is not one."""
    try:
        return GradeItem.model_validate(json.loads(line))
    except (ValueError, ValidationError) as exc:
        detail = f"bad input line: {exc}".splitlines()[0][:300]
        return Verdict(status="error", reward=0.0, detail=detail)


async def grade_lines(lines: list[str], *, workers: int = 2, timeout_s: float = 2.0) -> list[str]:
    """Verdict JSON for each line, in order; blank or malformed lines get ``error`` verdicts."""
    parsed = [parse_line(line) for line in lines]
    items = [p for p in parsed if isinstance(p, GradeItem)]
    async with GraderPool(workers=workers, timeout_s=timeout_s) as pool:
        graded = iter(await pool.grade_batch(items) if items else [])
    verdicts = [next(graded) if isinstance(p, GradeItem) else p for p in parsed]
    return [v.model_dump_json() for v in verdicts]
