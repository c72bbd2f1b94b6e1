"""Typed settings shared by every queuechat process, read once from env (prefix ``QUEUECHAT_``) and flags."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class MissingRedisUrl(ValueError):
    """A process that talks to Redis was started without a URL (the one place this is said)."""

    def __init__(self, who: str) -> None:
        super().__init__(
            f"{who} needs a Redis URL: --redis-url or QUEUECHAT_REDIS_URL (`queuechat up` embeds a Valkey)"
        )


class InvalidSettings(ValueError):
    """A setting from the environment that cannot be read: the message names its variable and what is wrong."""

    @classmethod
    def of(cls, exc: ValidationError) -> InvalidSettings:
        lines = []
        for error in exc.errors():
            name = "QUEUECHAT_" + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        return cls("; ".join(lines))


def _default_files_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "queuechat" / "files"


class WaitForWorker(BaseModel):
    """How long a request for a model with no live worker waits in the queue for one to start (an autoscaler
    scaling from zero) before it is answered 503 ``no_worker_available``; 0: at once.

    Written as a comma-separated list (``QUEUECHAT_WAIT_FOR_WORKER``): a bare number of seconds for every known
    model (one whose job stream exists: a worker has served it since Redis last lost its data), and
    ``model=seconds`` for one model. A model named so is *declared*: the API accepts its requests even on a fresh
    Redis where no worker has ever registered it, so a deployment that scales to zero lists its models here.
    """

    default: float = 0.0
    models: dict[str, float] = Field(default_factory=dict)

    def seconds(self, model: str) -> float:
        return self.models.get(model, self.default)

    def declares(self, model: str) -> bool:
        return model in self.models

    def __str__(self) -> str:
        return ",".join([f"{self.default:g}", *(f"{m}={s:g}" for m, s in self.models.items())])


def _wait_seconds(text: str, item: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"{item!r} is not a wait: write seconds (0 or more) for every model, or model=seconds, comma-separated "
            "(e.g. '30' or 'smollm2=300,30')"
        )
    return seconds


def parse_wait_for_worker(value: str) -> WaitForWorker:
    """``"30"``, ``"smollm2=300"``, ``"smollm2=300,gpu-model=600,30"``: see :class:`WaitForWorker`."""
    wait = WaitForWorker()
    defaults = 0
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        model, sep, seconds = item.rpartition("=")
        if not sep:
            defaults += 1
            if defaults > 1:
                raise ValueError(f"more than one wait for every model in {value!r}: give one bare number at most")
            wait.default = _wait_seconds(item, item)
            continue
        model = model.strip()
        if not model:
            raise ValueError(f"{item!r} names no model: write model=seconds")
        if model in wait.models:
            raise ValueError(f"model {model!r} has two waits in {value!r}")
        wait.models[model] = _wait_seconds(seconds.strip(), item)
    return wait


class Settings(BaseSettings):
    """What every process needs to agree on: where Redis is, how keys are named, and the timing of the protocol."""

    model_config = SettingsConfigDict(env_prefix="QUEUECHAT_", extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis/Valkey URL; None starts an embedded Valkey (queuechat up only)."
    )
    key_prefix: str = Field(default="qc", min_length=1, pattern=r"^[^:{}\s]+$")
    heartbeat_interval: float = Field(default=2.0, gt=0, description="Seconds between worker heartbeats.")
    heartbeat_ttl: float = Field(default=6.0, gt=0, description="A worker whose key is older is dead.")
    request_timeout: float = Field(default=600.0, gt=0, description="Deadline of a job, from its submission.")
    max_queue_len: int = Field(default=1024, gt=0, description="Per-model backlog over which the API says 429.")
    stream_maxlen: int = Field(default=100_000, gt=0, description="Approximate cap of a job stream's length.")
    max_deliveries: int = Field(default=3, gt=0, description="Deliveries of one job before it is dead-lettered.")
    max_worker_deaths: int = Field(
        default=2,
        gt=0,
        description="Workers that may die (killed, out of memory, wedged) holding one job before it is dead-lettered "
        "with 400 worker_crashed: a job that kills whoever runs it must not take down the whole fleet.",
    )
    stall_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a worker's engine may run sequences without producing output, at least (the limit is "
        "max(this, stall_factor x the slowest step seen)), before the worker calls itself wedged: it stops taking "
        "work, its jobs are taken over mid-stream and it exits with status 3 for its supervisor to restart it.",
    )
    stall_factor: float = Field(
        default=10.0, gt=0, description="The wedge limit in multiples of the slowest engine step seen (see above)."
    )
    claim_min_idle: float = Field(
        default=1.0,
        gt=0,
        description="Seconds a dead worker's job must sit unclaimed before a live worker takes it over; keeps two "
        "live workers from both claiming one job.",
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="Seconds a worker or API gets on SIGTERM to finish running work."
    )
    sse_ping_interval: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between keep-alive comments on an SSE stream that has nothing else to send, so proxies "
        "do not close a connection waiting on a queued job or a long prefill.",
    )
    event_log: bool = Field(
        default=True,
        description="Keep every job's events in a capped per-job stream beside the pub/sub channel, so a front "
        "server catches up after a gap, a client resumes its stream and another worker continues a job mid-stream.",
    )
    event_log_ttl: float = Field(
        default=300.0, gt=0, description="Seconds a job's event log is kept after the job ends (the resume window)."
    )
    event_log_maxlen: int = Field(default=100_000, gt=0, description="Approximate cap of one job's event log.")
    outage_grace: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a running request waits for a lost broker connection to come back (then catches up "
        "from the log) before it fails with 503.",
    )
    orphan_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a worker keeps generating a job nobody listens to (its front server died) so that its "
        "client can resume it on another front server; a client that hung up is cancelled at once.",
    )
    hangup_grace: float = Field(
        default=0.0,
        ge=0,
        description="Seconds a front server waits after a client hung up mid-stream before it has the job cancelled, "
        "so that the client can resume the stream after a dropped connection (0: cancel at once).",
    )
    max_tokens_cap: int | None = Field(
        default=None,
        gt=0,
        description="Most tokens a worker generates for one choice: a request without max_tokens gets at most this "
        "many (a chat completion's default is otherwise the rest of the context); one asking for more is refused "
        "with 400. None: the model's context is the only bound.",
    )
    max_request_bytes: int = Field(
        default=32 * 2**20,
        gt=0,
        description="Largest request body the API reads (413 above it); file uploads have files_max_bytes instead.",
    )
    files_dir: Path = Field(
        default_factory=_default_files_dir,
        description="Where uploaded batch files and batch results are stored; shared by the API and batch workers.",
    )
    files_max_bytes: int = Field(default=200 * 2**20, gt=0, description="Largest file an upload may have.")
    batch_max_requests: int = Field(default=50_000, gt=0, description="Most lines one batch file may have.")
    batch_queue: str = Field(
        default="",
        description="The rq queue of batch runs; empty (the default): '{key_prefix}-batch', so that deployments "
        "sharing one Redis under their own prefixes never run each other's batches (see batch_queue_name).",
    )
    batch_max_in_flight: int = Field(
        default=16, gt=0, description="Lines of one batch queued or running at once: the batch's share of the queue."
    )
    # NoDecode: the env value is a plain comma-separated list, not JSON
    wait_for_worker: Annotated[WaitForWorker, NoDecode] = Field(
        default_factory=WaitForWorker,
        description="Seconds a request for a model with no live worker waits in its queue for a worker to start "
        "(scale from zero), globally and per model: '30', 'smollm2=300', 'smollm2=300,30' (see WaitForWorker); "
        "0: answered 503 no_worker_available at once.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API keys clients must send as Bearer tokens; empty: no auth."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("wait_for_worker", mode="before")
    @classmethod
    def _parse_wait(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_wait_for_worker(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return WaitForWorker(default=_wait_seconds(str(value), str(value)))
        return value

    @classmethod
    def load(cls, redis_url: str | None = None, *, running: bool = True) -> Settings:
        """Settings from the environment, with a command-line ``--redis-url`` taking precedence; with neither, and
        ``running``, the Redis of this user's running ``queuechat up`` (see :mod:`broker.running`). A variable that
        cannot be read is :class:`InvalidSettings`, naming it."""
        try:
            settings = cls()
        except ValidationError as exc:
            raise InvalidSettings.of(exc) from None
        if redis_url:
            settings.redis_url = redis_url
        if not settings.redis_url and running:
            from broker.running import running_redis_url

            settings.redis_url = running_redis_url()
        return settings

    @property
    def batch_queue_name(self) -> str:
        """The rq queue of this deployment's batch runs: named after the key prefix unless set explicitly. rq keeps
        its keys under its own ``rq:`` namespace (it has no prefix setting), so the queue's name is what keeps one
        deployment's runs (``rq:queue:{p}-batch`` and its registries) apart from another's."""
        return self.batch_queue or f"{self.key_prefix}-batch"

    def require_redis_url(self, who: str) -> str:
        """The Redis URL; :class:`MissingRedisUrl` naming ``who`` (e.g. "the API") when there is none."""
        if not self.redis_url:
            raise MissingRedisUrl(who)
        return self.redis_url

    def __repr__(self) -> str:
        shown = self.model_dump()
        shown["api_keys"] = f"<{len(self.api_keys)} keys>"  # never print secrets into logs
        fields = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Settings({fields})"
