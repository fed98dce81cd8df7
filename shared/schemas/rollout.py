"""Rollout service bodies: ``POST /v1/generate``, ``POST /v1/value``, ``POST /v1/weights``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from shared.schemas.base import Dataset, Message, new_id, now
from shared.schemas.grade import MAX_TEXT_CHARS, VerdictStatus

FinishReason = Literal["stop", "length"]
MAX_BATCH = 4096
"""Default per-request item limit of the rollout service (``max_items``)."""
MAX_SCHEMA_ITEMS = 65_536
"""Hard ceiling the schema enforces; above any configurable ``max_items``, so the service's
own 413 (not a 422) answers a batch over its configured limit."""
MAX_SCHEMA_K = 4096
"""Hard ceiling on ``k``/``n``; above ``max_k`` (<= 256), so ``k_out_of_range`` is what a
caller sees for k in (max_k, 4096]."""
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
MAX_STREAM = 2**40
MAX_TEMPERATURE = 2.0
"""Highest sampling temperature: what every engine accepts (vLLM refuses above 2)."""
MAX_POLICY_VERSION = 2**53 - 1
"""Highest policy version: exact as a JSON number anywhere (a float64 holds every integer up
to 2**53), so a version cannot be pushed so high that no later one fits."""

ReturnStatus = Literal[VerdictStatus, "truncated"]
"""A continuation's outcome: the grader's verdict, or ``truncated`` (cut at its token limit,
or no room to continue at all: return 0, not graded — exactly like a truncated episode)."""

_STREAM_OFFSET_DOC = (
    "Position of the first item in the caller's whole batch. Sample j of item i draws from "
    "the random stream (seed, stream_offset + i, j), so splitting a batch into jobs changes "
    "no sample and no two jobs of one batch share a stream."
)


class SamplingParams(Message):
    """How to sample. ``temperature == 0`` means greedy; at most ``MAX_TEMPERATURE``."""

    temperature: float = Field(default=0.6, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=1024, ge=1, le=32768)
    stop: list[StopString] = Field(
        default_factory=list,
        max_length=MAX_STOP_STRINGS,
        description=f"Stop strings: at most {MAX_STOP_STRINGS}, each 1-{MAX_STOP_CHARS} chars.",
    )
    seed: int | None = Field(default=None, ge=0, description="Per-request seed; None = random.")


class Completion(Message):
    """One sampled continuation, with the log-probability of each sampled token."""

    text: str
    token_ids: list[int]
    logprobs: list[float] = Field(description="log π(token) under the sampling distribution.")
    finish_reason: FinishReason


class GenerateRequest(Message):
    prompts: list[str] = Field(min_length=1, max_length=MAX_SCHEMA_ITEMS)
    n: int = Field(default=1, ge=1, le=MAX_SCHEMA_K, description="Completions per prompt.")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stream_offset: int = Field(default=0, ge=0, le=MAX_STREAM, description=_STREAM_OFFSET_DOC)


class GenerateResult(Message):
    outputs: list[list[Completion]] = Field(
        description="outputs[i] = the n completions of prompt i."
    )
    policy_version: int = Field(ge=0)


class ValueItem(Message):
    """A partial solution whose value V(s) = P(final answer correct | s) is asked for."""

    prompt: str = Field(max_length=MAX_TEXT_CHARS)
    partial_response: str = Field(default="", max_length=MAX_TEXT_CHARS)
    gold: str = Field(max_length=MAX_TEXT_CHARS)
    dataset: Dataset = "gsm8k"


class ValueRequest(Message):
    """MC values of ``items``. ``sampling.max_tokens`` is the **response** budget: a state's
    continuations get what its partial response left of it, and no more than fits in the
    model's context after prompt + partial."""

    items: list[ValueItem] = Field(min_length=1, max_length=MAX_SCHEMA_ITEMS)
    k: int = Field(
        default=9, ge=1, le=MAX_SCHEMA_K, description="Monte Carlo continuations per state."
    )
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    stream_offset: int = Field(default=0, ge=0, le=MAX_STREAM, description=_STREAM_OFFSET_DOC)
    target_se: float | None = Field(
        default=None,
        gt=0.0,
        le=0.5,
        description="Adaptive K on demand: each state draws continuations (4, then doubling) "
        "until the Agresti-Coull standard error of its mean is at most this, with k as the "
        "ceiling; len(returns) is the K it spent. Stopping on the draws biases the mean a "
        "little. None = exactly k draws.",
    )


class ValueEstimate(Message):
    value: float = Field(ge=0.0, le=1.0, description="Mean return of the k continuations.")
    returns: list[float] = Field(
        description="Return of each continuation (one if terminal or out of budget)."
    )
    verdicts: list[ReturnStatus]
    num_tokens: int = Field(ge=0, description="Tokens sampled for this state.")
    terminal: bool = Field(default=False, description="State already final: graded directly.")
    out_of_budget: bool = Field(
        default=False,
        description="No token left to continue (response budget or context used up): "
        "value 0, nothing sampled, like a truncated episode.",
    )
    cached: bool = Field(
        default=False,
        description="Served from the replica's value cache (a seeded request this policy "
        "version has already estimated): the same returns a fresh computation would give, "
        "nothing sampled (num_tokens 0).",
    )


class ValueResult(Message):
    values: list[ValueEstimate]
    policy_version: int = Field(ge=0)


MAX_SHARDS = 1024
_SHA256_DOC = (
    "SHA-256 (hex) of each safetensors shard, by file name, as the trainer wrote it; the "
    "replica reads exactly these shards and refuses any whose digest differs."
)


def check_shard_digests(digests: dict[str, str]) -> dict[str, str]:
    """Shard names must be plain ``*.safetensors`` file names, digests 64 hex characters."""
    for name, digest in digests.items():
        if "/" in name or "\\" in name or name in {".", ".."} or not name.endswith(".safetensors"):
            raise ValueError(f"shard name {name!r} must be a plain *.safetensors file name")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"sha256 of {name!r} must be 64 hex characters")
    return {name: digest.lower() for name, digest in digests.items()}


class WeightsRequest(Message):
    """Load policy ``version`` from a safetensors directory under the checkpoint root.

    A version older than the one served is refused (409 ``stale_version``), and so is the
    version served unless the shards are byte-identical to the ones loaded (409
    ``version_conflict``); ``sha256`` is optional here (the push is bearer-authenticated) and
    checked when given."""

    version: int = Field(ge=0, le=MAX_POLICY_VERSION)
    path: str = Field(min_length=1, max_length=4096)
    sha256: dict[str, str] | None = Field(
        default=None, max_length=MAX_SHARDS, description=_SHA256_DOC
    )

    @model_validator(mode="after")
    def _digests(self) -> WeightsRequest:
        if self.sha256 is not None:
            self.sha256 = check_shard_digests(self.sha256)
        return self


class WeightsAnnouncement(Message):
    """Published by the trainer when ``policy-v{version}/`` is complete on the volume.

    Replicas load only ``<their checkpoint root>/<last component of path>``, only the shards
    named in ``sha256``, and only when every digest matches; an announcement without
    digests is refused."""

    version: int = Field(ge=0, le=MAX_POLICY_VERSION)
    path: str = Field(min_length=1, max_length=4096)
    sha256: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_SHARDS, description=_SHA256_DOC
    )
    announced_at: float = Field(default_factory=now)
    generation: int = Field(
        default=0,
        ge=0,
        description=(
            "Start time (µs) of the trainer process that announced. A later trainer (a resumed "
            "run) supersedes every version of an earlier one, so replicas follow it back to its "
            "checkpoint's version; within one trainer, versions only increase."
        ),
    )

    @property
    def order(self) -> tuple[int, int]:
        """(generation, version): announcements are followed in this order."""
        return (self.generation, self.version)

    @model_validator(mode="after")
    def _digests(self) -> WeightsAnnouncement:
        self.sha256 = check_shard_digests(self.sha256)
        return self


class WeightsStatus(Message):
    version: int = Field(ge=0)
    model: str


ServiceState = Literal["loading", "ready", "failed"]


class RolloutHealth(Message):
    """``GET /healthz`` and ``GET /readyz`` of the rollout service.

    ``loading``: the engine is being built or weights are being loaded; ``failed``: the
    engine could not be built, or the last weight load failed (until one succeeds)."""

    state: ServiceState
    version: int | None = Field(default=None, ge=0, description="Policy version served.")
    model: str | None = None
    error: str | None = Field(default=None, description="Why, when state is 'failed'.")


JobKind = Literal["generate", "value"]


class Job(Message):
    """A unit of rollout work on the queue, pinned to the policy version that must serve it."""

    job_id: str = Field(default_factory=new_id)
    kind: JobKind
    policy_version: int = Field(ge=0, le=MAX_POLICY_VERSION)
    generate: GenerateRequest | None = None
    value: ValueRequest | None = None
    attempt: int = Field(default=0, ge=0)
    created_at: float = Field(default_factory=now)

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> Job:
        if (self.kind == "generate") != (self.generate is not None) or (self.kind == "value") != (
            self.value is not None
        ):
            raise ValueError(f"a '{self.kind}' job must carry exactly the '{self.kind}' payload")
        return self


class JobResult(Message):
    """What a worker returns for a job; stored once per ``job_id``."""

    job_id: str
    policy_version: int = Field(ge=0, description="Version that actually served the job.")
    worker_id: str
    ok: bool
    generate: GenerateResult | None = None
    value: ValueResult | None = None
    error: str | None = None
    elapsed_s: float = Field(default=0.0, ge=0.0)
    finished_at: float = Field(default_factory=now)

    def completions(self) -> list[list[Completion]]:
        """The outputs of a ``generate`` job, one list per prompt."""
        assert self.generate is not None, f"job {self.job_id} carries no generate result"
        return self.generate.outputs

    def value_estimates(self) -> list[ValueEstimate]:
        """The estimates of a ``value`` job, one per item."""
        assert self.value is not None, f"job {self.job_id} carries no value result"
        return self.value.values


ReplicaState = Literal["starting", "ready", "loading", "failed"]


class ReplicaHeartbeat(Message):
    """A rollout worker's liveness record (Redis key with a TTL)."""

    replica_id: str
    state: ReplicaState = "starting"
    loaded_version: int | None = Field(default=None, ge=0)
    failed_version: int | None = Field(default=None, ge=0)
    error: str | None = None
    queue_depth: int = Field(default=0, ge=0)
    tokens_per_s: float = Field(default=0.0, ge=0.0)
    model: str = ""
    ts: float = Field(default_factory=now)
