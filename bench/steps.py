"""MATH step boundaries: the project's splitter against the VinePPO authors' own splitter.

    .venv/bin/python bench/steps.py [--authors-repo /work/.mirror/McGill-NLP+VinePPO/repo]
        [--baseline-rev REV] [--fuzz 5000] [--data-dir data] [--out docs/benchmarks/steps.md]

The authors' module (``src/treetune/tasks/math_extract_steps_inplace.py`` and the module it
imports) is read from a git checkout or bare mirror of McGill-NLP/VinePPO at run time into a
temporary directory, imported for comparison only, and deleted; it is never part of this
repository. ``--baseline-rev`` also scores ``shared/steps.py`` as it was at that git revision
of this repository (e.g. the rule before the authors' one).

Measured over the 500 MATH-500 gold solutions: steps per solution (mean, median, max) for
each splitter, and boundary agreement with the authors' splitter. A boundary is an interior
cut position (0 and len(text) are not counted); precision / recall / F1 are micro-averaged
over all solutions (a true positive is a position both splitters cut at); "exact" is the
share of solutions whose cut lists are identical. A whitespace-blind variant moves each cut
forward past whitespace first (a rule that cuts after a newline and one that cuts before it
then agree). Also: agreement on seeded synthetic MATH-like texts (``--fuzz``), and a SHA-256
fingerprint of the authors' cuts that tests/shared/test_steps.py pins.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from types import ModuleType  # noqa: E402

from shared.datasets import load_examples  # noqa: E402
from shared.steps import split_steps  # noqa: E402

DEFAULT_MIRROR = Path("/work/.mirror/McGill-NLP+VinePPO/repo")
AUTHORS_FILES = ("math_extract_steps.py", "math_extract_steps_inplace.py")
Cutter = Callable[[str], list[int]]
"""text -> sorted interior cut positions."""


# ---------------------------------------------------------------- the splitters


def load_authors_cutter(repo: Path) -> Cutter:
    """The authors' ``split_solution_inplace`` as a Cutter, read from ``repo`` at HEAD.

    ``repo`` is a bare mirror or a checkout of McGill-NLP/VinePPO. The two files are copied
    into a temporary ``treetune/tasks`` package, imported, and the directory is removed.
    """
    tmp = Path(tempfile.mkdtemp(prefix="authors_steps_"))
    try:
        pkg = tmp / "treetune" / "tasks"
        pkg.mkdir(parents=True)
        (tmp / "treetune" / "__init__.py").write_text("")
        (pkg / "__init__.py").write_text("")
        for name in AUTHORS_FILES:
            src = subprocess.run(
                ["git", "-C", str(repo), "show", f"HEAD:src/treetune/tasks/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (pkg / name).write_text(src)
        sys.path.insert(0, str(tmp))
        try:
            module = importlib.import_module("treetune.tasks.math_extract_steps_inplace")
        finally:
            sys.path.remove(str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    split = module.split_solution_inplace

    def cutter(text: str) -> list[int]:
        return [int(c) for c in split(text)[1:-1]]

    return cutter


def project_cutter(module: ModuleType | None = None) -> Cutter:
    """This repository's MATH rule (``shared.steps``, or an older copy of the module)."""
    fn = split_steps if module is None else module.split_steps

    def cutter(text: str) -> list[int]:
        return [a for a, _ in fn(text, "math")[1:]]

    return cutter


def load_steps_at(rev: str) -> ModuleType:
    """``shared/steps.py`` as it was at git revision ``rev`` of this repository."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:shared/steps.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "steps_at_rev.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"steps_at_{rev}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- scoring


@dataclass
class Agreement:
    tp: int = 0
    n_ours: int = 0
    n_theirs: int = 0
    exact: int = 0
    total: int = 0

    def add(self, ours: Sequence[int], theirs: Sequence[int]) -> None:
        self.tp += len(set(ours) & set(theirs))
        self.n_ours += len(ours)
        self.n_theirs += len(theirs)
        self.exact += list(ours) == list(theirs)
        self.total += 1

    @property
    def precision(self) -> float:
        return self.tp / self.n_ours if self.n_ours else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_theirs if self.n_theirs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def row(self, name: str) -> str:
        return (
            f"| {name} | {self.precision:.4f} | {self.recall:.4f} | {self.f1:.4f} | "
            f"{self.exact}/{self.total} ({self.exact / max(self.total, 1):.1%}) |"
        )


def skip_ws(text: str, cuts: Sequence[int]) -> list[int]:
    """Each cut moved forward past whitespace (duplicates merged)."""
    out = []
    for c in cuts:
        while c < len(text) and text[c].isspace():
            c += 1
        out.append(c)
    return sorted(set(out))


def fingerprint(ids: Sequence[str], cuts: Sequence[Sequence[int]]) -> str:
    """SHA-256 of ``id:cut,cut,...`` lines, in dataset order."""
    lines = [f"{i}:{','.join(map(str, c))}" for i, c in zip(ids, cuts, strict=True)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ---------------------------------------------------------------- synthetic texts

_WORDS = [
    "we", "have", "so", "the", "and", "to", "thus", "Then", "Since", "Therefore", "Hence", "x",
    "y", "is", "a", "of", "e.g.", "Dr.", "A.", "value", "sum", "note", "that", "it", "follows",
]  # fmt: skip
_MATH = [
    "x = 1", "a + b = c", "x \\equiv 3 \\pmod 5", "\\frac{1}{2}", "y, z", "3.", "b = 2.",
    "\\cancelto{0}{x}", "(1,2)", "f(1, 2)", "2^{10} + 1",
]  # fmt: skip
_WRAPS = [
    ("$", "$"), ("$", "$"), ("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"),
    ("\\begin{align*}\n", "\n\\end{align*}"), ("[asy]\n", "\n[/asy]"),
]  # fmt: skip


def synthetic_text(rng: random.Random) -> str:
    """A MATH-like response: prose with punctuation, inline and display math, newlines."""
    parts = []
    for _ in range(rng.randint(1, 10)):
        if rng.random() < 0.6:
            words = []
            for _ in range(rng.randint(1, 14)):
                r = rng.random()
                words.append(rng.choice(_WORDS) + ("," if r < 0.1 else "." if r < 0.17 else ""))
            parts.append(" ".join(words))
        else:
            inner = " ".join(rng.choice(_MATH) for _ in range(rng.randint(1, 8)))
            if rng.random() < 0.3:
                inner = inner.replace(" = ", " = \\\\\n", 1)
            opener, closer = rng.choice(_WRAPS)
            parts.append(opener + inner + rng.choice(["", ".", ","]) + closer)
        parts.append(rng.choice([" ", " ", "\n", "\n\n", ". ", ", "]))
    return "".join(parts).strip()


# ---------------------------------------------------------------- report


def stats(counts: Sequence[int]) -> str:
    return (
        f"{statistics.mean(counts):.3f} | {statistics.median(counts):g} | "
        f"{min(counts)} | {max(counts)}"
    )


def timed(cutter: Cutter, texts: Sequence[str]) -> tuple[list[list[int] | None], float]:
    """Cuts per text (None where the cutter raised) and the mean milliseconds per text."""
    out: list[list[int] | None] = []
    t0 = time.perf_counter()
    for t in texts:
        try:
            out.append(cutter(t))
        except Exception:  # the authors' splitter asserts on some inputs
            out.append(None)
    return out, 1000 * (time.perf_counter() - t0) / max(len(texts), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-repo", type=Path, default=DEFAULT_MIRROR)
    parser.add_argument("--baseline-rev", default=None, help="also score shared/steps.py@REV")
    parser.add_argument("--fuzz", type=int, default=5000, help="synthetic texts (0 = skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/steps.md")
    args = parser.parse_args()

    theirs_cut = load_authors_cutter(args.authors_repo)
    authors_rev = subprocess.run(
        ["git", "-C", str(args.authors_repo), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours_rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    splitters: dict[str, Cutter] = {"project (this tree)": project_cutter()}
    if args.baseline_rev:
        splitters[f"project @ {args.baseline_rev}"] = project_cutter(
            load_steps_at(args.baseline_rev)
        )

    examples = load_examples("math", "test", data_dir=args.data_dir)
    texts = [e.solution for e in examples]
    theirs, theirs_ms = timed(theirs_cut, texts)
    ok = [i for i, c in enumerate(theirs) if c is not None]

    baseline_flag = f" --baseline-rev {args.baseline_rev}" if args.baseline_rev else ""
    lines = [
        "# Reasoning steps: MATH boundaries vs the authors' splitter",
        "",
        f"Command: `.venv/bin/python bench/steps.py{baseline_flag} --fuzz {args.fuzz}` (this "
        f"repository at `{ours_rev}` plus uncommitted changes, if any).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at the end.",
        f"Authors' splitter: `split_solution_inplace` of McGill-NLP/VinePPO @ `{authors_rev[:12]}`"
        " (`src/treetune/tasks/math_extract_steps_inplace.py`, the one their MATH configs use:"
        " `inplace_split_solution: true`, no answer prefix), loaded from the mirror at run time.",
        "",
        f"## MATH-500 gold solutions ({len(texts)}; the authors' splitter raised on "
        f"{len(texts) - len(ok)})",
        "",
        "| splitter | mean steps | median | min | max | ms / solution |",
        "|---|---:|---:|---:|---:|---:|",
        f"| authors | {stats([len(theirs[i] or []) + 1 for i in ok])} | {theirs_ms:.2f} |",
    ]
    results: dict[str, tuple[list[list[int] | None], float]] = {}
    for name, cutter in splitters.items():
        results[name] = timed(cutter, texts)
        cuts, ms = results[name]
        counts = [len(c) + 1 for c in cuts if c is not None]
        lines.append(f"| {name} | {stats(counts)} | {ms:.2f} |")
    lines += [
        "",
        "Boundary agreement with the authors (micro-averaged over the solutions the authors'"
        " splitter accepts). A boundary is an interior cut position; precision = shared /"
        ' ours, recall = shared / theirs; "whitespace-blind" first moves every cut forward'
        " past whitespace (cutting after a newline then counts as cutting before it)."
        + (
            f" `project @ {args.baseline_rev}` is `shared/steps.py` as of that revision."
            if args.baseline_rev
            else ""
        ),
        "",
        "| splitter | precision | recall | F1 | identical splits |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in splitters:
        cuts = results[name][0]
        strict, blind = Agreement(), Agreement()
        for i in ok:
            mine, ref = cuts[i] or [], theirs[i] or []
            strict.add(mine, ref)
            blind.add(skip_ws(texts[i], mine), skip_ws(texts[i], ref))
        lines += [strict.row(name), blind.row(f"{name}, whitespace-blind")]
    ids = [e.id for e in examples]
    ours_cuts = results["project (this tree)"][0]
    lines += [
        "",
        f"Fingerprint of the authors' cuts: `{fingerprint(ids, [c or [] for c in theirs])}`",
        f"Fingerprint of this tree's cuts:  `{fingerprint(ids, [c or [] for c in ours_cuts])}`",
        "",
    ]

    if args.fuzz:
        rng = random.Random(args.seed)
        synth = [synthetic_text(rng) for _ in range(args.fuzz)]
        ref_cuts, _ = timed(theirs_cut, synth)
        ok_s = [i for i, c in enumerate(ref_cuts) if c is not None]
        lines += [
            f"## Synthetic MATH-like texts ({args.fuzz}, seed {args.seed}; the authors' splitter"
            f" raised on {args.fuzz - len(ok_s)})",
            "",
            "| splitter | precision | recall | F1 | identical splits |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, cutter in splitters.items():
            mine_cuts, _ = timed(cutter, synth)
            agree = Agreement()
            for i in ok_s:
                agree.add(mine_cuts[i] or [], ref_cuts[i] or [])
            lines.append(agree.row(name))
        lines.append("")

    lines += other_datasets(args.data_dir)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


def other_datasets(data_dir: Path | None) -> list[str]:
    """Steps per gold solution under the project's line rule (GSM8K test, arithmetic test)."""
    rows = [
        ("GSM8K test", load_examples("gsm8k", "test", data_dir=data_dir), "gsm8k"),
        (
            "arithmetic test (default config, seed 0)",
            load_examples("arithmetic", "test", n=1000, seed=0),
            "arithmetic",
        ),
    ]
    out = [
        "## Other datasets (project rules, unchanged: one step per line)",
        "",
        "| dataset | solutions | mean steps | median | min | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, examples, rules in rows:
        counts = [len(split_steps(e.solution, rules)) for e in examples]
        out.append(f"| {name} | {len(counts)} | {stats(counts)} |")
    return [*out, ""]


if __name__ == "__main__":
    main()
