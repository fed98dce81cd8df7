"""Every body and message round-trips through JSON and rejects what the edge must reject."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from shared import schemas as S

EXAMPLES: list[BaseModel] = [
    S.ErrorBody(error="validation_error", message="items: too short"),
    S.GradeRequest(items=[S.GradeItem(response="#### 4", gold="4", dataset="gsm8k")]),
    S.GradeResponse(verdicts=[S.Verdict(status="correct", reward=1.0, extracted="4")]),
    S.GenerateRequest(prompts=["Q: 1+1?"], n=2, sampling=S.SamplingParams(seed=3, stop=["\n\n"])),
    S.GenerateResult(
        outputs=[[S.Completion(text="2", token_ids=[5], logprobs=[-0.1], finish_reason="stop")]],
        policy_version=3,
    ),
    S.ValueRequest(items=[S.ValueItem(prompt="Q", partial_response="a\n", gold="4")], k=9),
    S.GenerateRequest(prompts=["Q"], stream_offset=16),
    S.ValueRequest(items=[S.ValueItem(prompt="Q", gold="4")], stream_offset=32),
    S.ValueEstimate(
        value=0.0, returns=[0.0], verdicts=["truncated"], num_tokens=0, out_of_budget=True
    ),
    S.ValueResult(
        values=[
            S.ValueEstimate(
                value=0.5, returns=[1, 0], verdicts=["correct", "incorrect"], num_tokens=12
            )
        ],
        policy_version=0,
    ),
    S.WeightsRequest(version=2, path="policy-v2"),
    S.WeightsAnnouncement(version=2, path="policy-v2"),
    S.WeightsAnnouncement(version=2, path="/c/policy-v2", sha256={"model.safetensors": "ab" * 32}),
    S.Job(
        kind="value",
        policy_version=1,
        value=S.ValueRequest(items=[S.ValueItem(prompt="Q", gold="1")]),
    ),
    S.JobResult(job_id="abc", policy_version=1, worker_id="w0", ok=False, error="boom"),
    S.ReplicaHeartbeat(replica_id="r0", state="ready", loaded_version=4, tokens_per_s=120.5),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_json_round_trip(model: BaseModel) -> None:
    text = model.model_dump_json()
    again = type(model).model_validate_json(text)
    assert again == model
    assert '"schema_version":1' in text


def test_ids_are_generated_and_unique() -> None:
    a = S.Job(
        kind="value",
        policy_version=0,
        value=S.ValueRequest(items=[S.ValueItem(prompt="Q", gold="1")]),
    )
    b = a.model_copy(update={"job_id": S.new_id()})
    assert len(a.job_id) == 32 and a.job_id != b.job_id
    assert (
        S.ErrorBody(error="x", message="y").request_id
        != S.ErrorBody(error="x", message="y").request_id
    )


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (S.ValueRequest, {"items": [{"prompt": "Q", "gold": "1"}], "k": 0}),  # k below 1
        (S.ValueRequest, {"items": [{"prompt": "Q", "gold": "1"}], "k": 4097}),  # hard ceiling
        (S.SamplingParams, {"stop": ["x" * 257]}),  # stop string too long
        (S.SamplingParams, {"stop": [""]}),  # empty stop string
        (S.SamplingParams, {"stop": ["a"] * 17}),  # too many stop strings
        (S.ValueRequest, {"items": []}),  # empty batch
        (S.GradeItem, {"response": "x", "gold": "1", "dataset": "aime"}),  # unknown dataset
        (S.SamplingParams, {"temperature": -1}),  # negative temperature
        (S.SamplingParams, {"top_p": 0}),  # top_p must be > 0
        (S.GenerateRequest, {"prompts": ["a"], "extra": 1}),  # unknown field
        (S.WeightsRequest, {"version": 1, "path": "p", "schema_version": 2}),  # future schema
        (S.Job, {"kind": "value", "policy_version": 0}),  # payload missing
        (S.GenerateRequest, {"prompts": ["a"], "stream_offset": -1}),  # negative offset
        (S.ValueEstimate, {"value": 0, "returns": [0], "verdicts": ["cut"], "num_tokens": 0}),
    ],
)
def test_edge_rejects(model: type[BaseModel], data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(data)


@pytest.mark.parametrize(
    "digests",
    [
        {"../model.safetensors": "ab" * 32},  # not a plain file name
        {"pytorch_model.bin": "ab" * 32},  # not safetensors
        {"model.safetensors": "xyz"},  # not a SHA-256
    ],
)
def test_weights_digests_are_plain_safetensors_names_and_sha256(digests: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        S.WeightsAnnouncement(version=1, path="policy-v1", sha256=digests)
    with pytest.raises(ValidationError):
        S.WeightsRequest(version=1, path="policy-v1", sha256=digests)


def test_versions_and_temperatures_stop_where_every_part_can_follow() -> None:
    """A policy version is at most 2**53 - 1 (exact as any JSON number; a larger one used to
    be accepted and made every later push stale); a temperature at most 2 (vLLM's limit)."""
    top = 2**53 - 1
    for model, extra in ((S.WeightsRequest, {}), (S.WeightsAnnouncement, {"sha256": {}})):
        assert model.model_validate({"version": top, "path": "p", **extra}).version == top
        with pytest.raises(ValidationError):
            model.model_validate({"version": top + 1, "path": "p", **extra})
    with pytest.raises(ValidationError):
        S.Job(kind="generate", policy_version=top + 1, generate=S.GenerateRequest(prompts=["q"]))
    assert S.SamplingParams(temperature=2.0).temperature == 2.0
    with pytest.raises(ValidationError):
        S.SamplingParams(temperature=2.01)
