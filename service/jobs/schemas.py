"""Request and response schemas of ``/v1/jobs`` (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.jobs.states import JobKind, JobState

ZooName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", examples=["unet-adult"])]
VolumeId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
HookName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,64}$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaeTrainingRequest(_Request):
    """Train an SAE on one model's activations at ``hook`` (default: the model's default hook)."""

    model_id: ZooName
    hook: HookName | None = None
    cohorts: list[ZooName] | None = Field(
        default=None, min_length=1, max_length=16, description="Zoo data cohorts."
    )
    volume_ids: list[VolumeId] | None = Field(
        default=None, min_length=1, max_length=2000, description="Uploads."
    )
    arch: Literal["batchtopk", "topk", "relu"] = "batchtopk"
    expansion: int = Field(default=8, ge=1, le=256, description="d_sae / d_in.")
    k: int = Field(default=32, ge=1, le=4096, description="Active latents per token (TopK variants).")
    tokens: int | None = Field(default=None, ge=1, le=10**10, description="Token budget.")
    steps: int | None = Field(
        default=None, ge=1, le=10**7, description="Optimisation steps (instead of tokens)."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _one_source(self) -> SaeTrainingRequest:
        if (self.cohorts is None) == (self.volume_ids is None):
            raise ValueError("give exactly one of 'cohorts' or 'volume_ids'")
        if self.tokens is not None and self.steps is not None:
            raise ValueError("give 'tokens' or 'steps', not both")
        return self


class DiffReportRequest(_Request):
    """Diff every zoo model that has an SAE across the cohorts under ``ZOO/data/test`` (case-level, BH)."""

    source: ZooName | None = Field(default=None, description="Training cohort; null -> from the model cards.")
    max_cases_per_cohort: int = Field(default=20, ge=1, le=500)
    n_perm: int = Field(
        default=500, ge=10, le=10000, description="Permutations of the cross-architecture null."
    )


class RecoveryRequest(_Request):
    """Recovery benchmark: find ``target`` cases the model fails on and repair them by editing latents."""

    model_id: ZooName
    sae_id: ZooName | None = Field(default=None, description="Null -> the model's main SAE.")
    target: ZooName = Field(description="Target cohort under the zoo's data/test/ folder (held-out cases).")
    protocol: Literal["oracle", "blind", "blind-unlabelled", "diff", "diff-unlabelled"] = "blind"
    region: Literal["SNFH", "WT", "TC", "ET", "NCR"] = "SNFH"
    threshold: float = Field(default=0.5, ge=0, le=1, description="Failure: region Dice below this.")
    diff_report_id: ZooName | None = Field(
        default=None,
        description="Protocols diff and diff-unlabelled: the diff report (GET /v1/diff-reports/{id}) whose target-specific "
        "latents are edited; null -> the zoo's own report ('zoo'). It must use the same SAE.",
    )


ShiftKind = Literal[
    "rician_noise", "thick_slices", "bright_compression", "bias_field", "gain_offset", "motion_ghosting",
    "modality_swap",
]  # fmt: skip


class RecoverySuiteRequest(_Request):
    """Leave-one-shift-out evaluation (as ``medseglens recover-suite``): per shift kind, fresh adult
    cases shifted, every protocol and baseline calibrated on that shift's own calibration cases."""

    model_ids: list[ZooName] | None = Field(
        default=None, min_length=1, max_length=8, description="Null -> every zoo model with an SAE."
    )
    shifts: list[ShiftKind] | None = Field(
        default=None, min_length=1, max_length=7, description="Null -> every shift kind."
    )
    protocols: list[Literal["oracle", "blind", "blind-unlabelled", "diff", "diff-unlabelled"]] = Field(
        default=["oracle", "blind", "diff"], min_length=1, max_length=5
    )
    n_target: int = Field(
        default=9, ge=2, le=40, description="Shifted cases per shift (calibration + evaluated)."
    )
    calib_n: int = Field(default=3, ge=1, le=5, description="Labelled calibration cases per shift.")
    n_source: int = Field(default=4, ge=1, le=40, description="Unshifted source cases.")
    n_diff: int = Field(default=6, ge=3, le=40, description="Unlabelled shifted cases the diff reads.")
    seed: int = Field(default=9100, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _calibration_fits(self) -> RecoverySuiteRequest:
        if self.calib_n >= self.n_target:
            raise ValueError("'calib_n' must be below 'n_target' (some shifted cases must be held out)")
        return self


class JobOut(BaseModel):
    """A job record as served: state, progress (0..1), latest metrics, log tail and result link."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: JobKind
    state: JobState
    params: dict[str, Any]
    progress: float = Field(ge=0, le=1)
    metrics: dict[str, Any] = Field(
        description="Latest reported metrics (step, loss, explained_variance, l0...)."
    )
    log: list[str] = Field(description="Last log lines, oldest first.")
    error: str | None
    result_link: str | None = Field(description="Where the result is, once succeeded (e.g. /v1/saes/<id>).")
    cancel_requested: bool
    attempts: int
    worker_id: str | None
    created: datetime
    started: datetime | None
    finished: datetime | None
    heartbeat: datetime | None

    @classmethod
    def of(cls, job: Any) -> JobOut:
        return cls(
            id=job.id,
            kind=JobKind(job.kind),
            state=JobState(job.state),
            params=job.params or {},
            progress=job.progress or 0.0,
            metrics=job.metrics or {},
            log=(job.log_tail or "").splitlines(),
            error=job.error,
            result_link=job.result_ref,
            cancel_requested=bool(job.cancel_requested),
            attempts=job.attempts or 0,
            worker_id=job.worker_id,
            created=job.created,
            started=job.started,
            finished=job.finished,
            heartbeat=job.heartbeat,
        )


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobOut]
    total: int
    limit: int
    offset: int
