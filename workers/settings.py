"""A worker's own settings: what ``queuechat worker``'s flags say, each also read from ``QUEUECHAT_<FLAG>`` (a flag
given on the command line wins), so a compose file or a Kubernetes manifest can configure a worker with
environment variables alone. What every process shares (the Redis URL, the key prefix, heartbeats, the drain
time) stays in :class:`broker.settings.Settings`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.settings import InvalidSettings

# The engine's thread holds the GIL while it runs Python between torch ops. The consume loop, woken by a Redis reply
# or by the engine's output, must then wait for it, by default up to sys.getswitchinterval() = 5 ms, and a job's
# first token crosses several such hops (read, admit, publish accepted, poll, publish). A shorter interval makes
# the loop wait less; the engine thread loses little, its time being in torch kernels that release the GIL.
GIL_SWITCH_INTERVAL = 0.0005


class WorkerSettings(BaseSettings):
    # protected_namespaces: pydantic keeps "model_" names for itself, and FastChat's flags begin so
    model_config = SettingsConfigDict(env_prefix="QUEUECHAT_", extra="ignore", protected_namespaces=())

    model_path: str | None = Field(default=None, description="HF model directory or .gguf file (default: SmolLM2)")
    # NoDecode: the env value is a plain comma-separated list, not JSON
    model_names: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="Names the model is served under (default: from the path)"
    )
    device: str = "auto"
    dtype: str = "auto"
    num_gpus: int = Field(default=1, ge=1)
    max_gpu_memory: str | None = None
    limit_worker_concurrency: int = Field(default=32, ge=1)
    seed: int | None = None
    conv_template: str | None = None
    num_threads: int | None = Field(default=None, ge=1, description="torch threads (default: torch's)")
    kv_cache_gib: float = Field(default=1.0, gt=0)
    num_blocks: int | None = Field(default=None, ge=1)
    page_size: int = Field(default=16, ge=4)
    max_batch_tokens: int | None = Field(default=None, ge=16)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "0.0.0.0"
    stream_interval: int = Field(default=1, ge=1)
    prefix_caching: bool = True
    engine: str = "transformers"
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    quantization: str | None = None
    enforce_eager: bool = False
    engine_args: dict[str, Any] = Field(default_factory=dict)
    reasoning_parser: str | None = None
    tool_call_parser: str = "auto"
    switch_interval: float = Field(
        default=GIL_SWITCH_INTERVAL, gt=0, description="Python's thread switch interval in the worker (seconds)"
    )

    @field_validator("model_names", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()] or None
        return value

    @classmethod
    def load(cls, **flags: Any) -> WorkerSettings:
        """The environment's settings, with the flags that were given (not None) taking precedence; a variable that
        cannot be read is :class:`InvalidSettings`, naming it."""
        try:
            return cls(**{name: value for name, value in flags.items() if value is not None})
        except ValidationError as exc:
            raise InvalidSettings.of(exc) from None
