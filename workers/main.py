"""``queuechat worker`` / ``python -m workers``: load a model and serve its job streams.

Flag names follow FastChat's model_worker where they mean the same; ``--controller-address`` becomes
``--redis-url`` (env ``QUEUECHAT_REDIS_URL``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

# The exit status of a worker whose engine wedged (see workers/progress.py) or failed for good (workers/engine.py):
# not 0, so a supervisor restarts it.
WEDGED_EXIT_STATUS = 3


def default_names(model_path: str | None) -> list[str]:
    if model_path is None:
        from workers.default_model import DEFAULT_MODEL_NAME

        return [DEFAULT_MODEL_NAME]
    path = Path(model_path)
    return [path.stem if path.suffix == ".gguf" else path.name]


def build_worker(options: WorkerSettings, settings: Any, engine: Any = None) -> Any:
    """Load the model and wire its backends, consumer and registration into a :class:`ModelWorker`. ``engine``: a
    generation engine already built (with its tokenizer as ``engine.tokenizer``), as tests share one engine between
    workers."""
    from broker.connection import sync_client
    from broker.consumer import JobConsumer
    from broker.keys import Keys
    from broker.registry import WorkerCard, WorkerRegistration, new_worker_id
    from broker.schemas import JobKind
    from workers.backends import Backends
    from workers.embeddings import SentenceEmbedder, is_sentence_transformers
    from workers.engines import EngineOptions, build, set_threads
    from workers.parsing import OutputParsers
    from workers.prompts import load_chat_template
    from workers.service import ModelWorker

    if not settings.redis_url:
        raise typer.BadParameter("a worker needs --redis-url (or QUEUECHAT_REDIS_URL)")
    set_threads(options.num_threads)
    sys.setswitchinterval(options.switch_interval)
    chat_template = load_chat_template(options.conv_template)
    model_path = options.model_path
    if model_path is None:
        from workers.default_model import default_model_dir

        model_path = str(default_model_dir())
    names = options.model_names or default_names(options.model_path)
    if engine is not None:
        backends = Backends(engine)
        tokenizer, device = engine.tokenizer, getattr(engine, "device", "cpu")
    elif is_sentence_transformers(model_path):
        # an embeddings worker: same consume loop, registration and fault tolerance, no generation engine
        embedder = SentenceEmbedder(model_path, device=options.device, dtype=options.dtype)
        backends = Backends(answerers=(embedder,))
        tokenizer, device = embedder.tokenizer, embedder.device
    else:
        built = build(
            options.engine,
            model_path,
            EngineOptions(
                slots=options.limit_worker_concurrency,
                device=options.device,
                dtype=options.dtype,
                num_gpus=options.num_gpus,
                max_gpu_memory=options.max_gpu_memory,
                seed=options.seed,
                kv_cache_gib=options.kv_cache_gib,
                num_blocks=options.num_blocks,
                page_size=options.page_size,
                max_batch_tokens=options.max_batch_tokens,
                prefix_caching=options.prefix_caching,
                max_model_len=options.max_model_len,
                gpu_memory_utilization=options.gpu_memory_utilization,
                quantization=options.quantization,
                enforce_eager=options.enforce_eager,
                engine_args=options.engine_args,
            ),
        )
        backends = Backends(built.engine)
        tokenizer, device = built.tokenizer, built.device
        log.info("engine: %s on %s", built.kind, device)
    parsers = OutputParsers.choose(
        options.reasoning_parser, options.tool_call_parser, chat_template or getattr(tokenizer, "chat_template", None)
    )
    keys = Keys(settings.key_prefix)
    worker_id = new_worker_id()
    # XREADGROUP blocks up to 0.5 s, so the socket timeout must be longer than that
    client = sync_client(settings.redis_url, command_timeout=10.0)
    from importlib.metadata import PackageNotFoundError, version

    try:
        qc_version = version("queuechat")
    except PackageNotFoundError:
        qc_version = "dev"
    generates = backends.engine is not None
    card = WorkerCard(
        id=worker_id,
        models=names,
        device=str(device),
        slots=backends.slots,
        version=qc_version,
        max_model_len=backends.max_model_len,
        embeddings=JobKind.EMBEDDING in backends.kinds,
        reasoning_parser=parsers.reasoning if generates else None,
        tool_call_parser=parsers.tool_calls if generates else None,
    )
    worker = ModelWorker(
        backends,
        tokenizer,
        JobConsumer(
            client,
            keys,
            names,
            worker_id,
            max_deliveries=settings.max_deliveries,
            max_worker_deaths=settings.max_worker_deaths,
            heartbeat_ttl=settings.heartbeat_ttl,
            claim_min_idle=settings.claim_min_idle,
            event_log=settings.event_log,
            event_log_ttl=settings.event_log_ttl,
            event_log_maxlen=settings.event_log_maxlen,
        ),
        WorkerRegistration(client, keys, card, settings.heartbeat_ttl),
        heartbeat_interval=settings.heartbeat_interval,
        heartbeat_ttl=settings.heartbeat_ttl,
        chat_template=chat_template,
        drain_timeout=settings.drain_timeout,
        stream_interval=options.stream_interval,
        orphan_grace=settings.orphan_grace,
        max_tokens_cap=settings.max_tokens_cap,
        stall_timeout=settings.stall_timeout,
        stall_factor=settings.stall_factor,
        parsers=parsers,
    )
    if options.metrics_port is not None:
        from workers.metrics import WorkerMetrics, scrape_client

        worker.metrics = WorkerMetrics(worker, scrape_client(settings.redis_url), keys, names, backends.slots)
        worker.metrics.serve(options.metrics_port, options.metrics_host)
    return worker


def serve(options: WorkerSettings, settings: Any) -> None:
    try:
        worker = build_worker(options, settings)
    except (OSError, ValueError) as exc:
        # A model path that is no model (a typo, a hub id, a directory without weights): one line, not a traceback
        # (--log-level debug shows it).
        log.debug("loading the model failed", exc_info=True)
        said = " ".join(str(exc).split())  # one line, whatever the library wrote
        if isinstance(exc, FileNotFoundError) and options.model_path and not Path(options.model_path).exists():
            hint = " (a hub id is not downloaded here: fetch it first, e.g. `hf download ORG/NAME --local-dir DIR`)"
            said += hint if options.model_path.count("/") == 1 else ""
        else:
            said = f"cannot load {options.model_path or 'the default model'}: {said[:500]}"
        typer.echo(f"queuechat worker: {said}", err=True)
        raise typer.Exit(code=1) from None

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: draining", signum)
        worker.stop()

    def on_wedged() -> None:
        # At once, without closing the engine: its thread is stuck, and a clean shutdown would wait on it forever.
        log.error("exiting with status %d: the engine is wedged or failed", WEDGED_EXIT_STATUS)
        logging.shutdown()
        os._exit(WEDGED_EXIT_STATUS)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.heartbeat.on_wedged = on_wedged
    try:
        worker.run()
        if worker.wedged.is_set():
            on_wedged()
    finally:
        worker.close()
        if worker.metrics is not None:
            worker.metrics.close()


def worker_command(
    model_path: Annotated[
        str | None, typer.Option(help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    ] = None,
    model_names: Annotated[
        str | None,
        typer.Option(help="Comma-separated names to serve the model under (default: from the path)"),
    ] = None,
    redis_url: Annotated[str | None, typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Redis/Valkey URL")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps  [default: auto]")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16  [default: auto]")] = None,
    num_gpus: Annotated[
        int | None, typer.Option(min=1, help="Split the model over this many GPUs (vLLM: tensor parallel size)")
    ] = None,
    max_gpu_memory: Annotated[str | None, typer.Option(help="Per-GPU memory cap with --num-gpus, e.g. 20GiB")] = None,
    limit_worker_concurrency: Annotated[
        int | None, typer.Option(min=1, help="Sequences run at once  [default: 32]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the worker's sampler")] = None,
    conv_template: Annotated[str | None, typer.Option(help="Chat template override: 'chatml' or a Jinja file")] = None,
    num_threads: Annotated[int | None, typer.Option(min=1, help="torch threads (default: torch's)")] = None,
    kv_cache_gib: Annotated[
        float | None, typer.Option(min=0.01, help="KV cache size when --num-blocks is not set  [default: 1.0]")
    ] = None,
    num_blocks: Annotated[int | None, typer.Option(min=1, help="KV cache blocks (overrides --kv-cache-gib)")] = None,
    page_size: Annotated[int | None, typer.Option(min=4, help="Tokens per KV cache block  [default: 16]")] = None,
    max_batch_tokens: Annotated[
        int | None, typer.Option(min=16, help="Tokens per engine step (chunked prefill; default 512, vLLM: its own)")
    ] = None,
    drain_timeout: Annotated[
        float | None, typer.Option(min=0, help="Seconds to finish running work on SIGTERM (default 30)")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve Prometheus metrics on this port (default: off)")
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="Address of the metrics endpoint  [default: 0.0.0.0]")
    ] = None,
    stream_interval: Annotated[
        int | None,
        typer.Option(
            min=1, help="Publish a sequence's tokens every N tokens (its first and last at once)  [default: 1]"
        ),
    ] = None,
    prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--prefix-caching/--no-prefix-caching",
            help="Prompts that begin alike share the KV cache blocks of their common beginning  [default: on]",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="transformers, vllm, or auto (vLLM when installed, on CPU or CUDA; else transformers)  "
            "[default: transformers]",
        ),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(min=1, help="vLLM: context length (default: the model's)")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(min=0.01, max=1.0, help="vLLM: fraction of GPU memory for weights and KV cache")
    ] = None,
    quantization: Annotated[str | None, typer.Option(help="vLLM: quantization method (awq, gptq, fp8, ...)")] = None,
    enforce_eager: Annotated[
        bool | None, typer.Option("--enforce-eager/--no-enforce-eager", help="vLLM: no CUDA graphs or compilation")
    ] = None,
    engine_arg: Annotated[
        list[str] | None, typer.Option(help="vLLM: any other engine argument, KEY=VALUE (repeatable)")
    ] = None,
    reasoning_parser: Annotated[
        str | None,
        typer.Option(help="Return reasoning apart from the answer: deepseek_r1 or qwen3 (<think>...</think>)"),
    ] = None,
    tool_call_parser: Annotated[
        str | None,
        typer.Option(
            help="How the model writes tool calls: auto (from the chat template), hermes, llama3_json, "
            "mistral or qwen3_coder  [default: auto]"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Load a model and serve its job streams from Redis. Each flag can also be set as QUEUECHAT_<FLAG> (e.g.
    QUEUECHAT_LIMIT_WORKER_CONCURRENCY=64); a flag on the command line wins."""
    from broker import tracing
    from broker.logs import configure_logging
    from broker.settings import InvalidSettings, Settings
    from workers.parsing import check_flags

    try:
        options = WorkerSettings.load(
            model_path=model_path,
            model_names=model_names,
            device=device,
            dtype=dtype,
            num_gpus=num_gpus,
            max_gpu_memory=max_gpu_memory,
            limit_worker_concurrency=limit_worker_concurrency,
            seed=seed,
            conv_template=conv_template,
            num_threads=num_threads,
            kv_cache_gib=kv_cache_gib,
            num_blocks=num_blocks,
            page_size=page_size,
            max_batch_tokens=max_batch_tokens,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            stream_interval=stream_interval,
            prefix_caching=prefix_caching,
            engine=engine,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            quantization=quantization,
            enforce_eager=enforce_eager,
            engine_args=_engine_args(engine_arg) if engine_arg else None,
            reasoning_parser=reasoning_parser,
            tool_call_parser=tool_call_parser,
        )
        check_flags(options.reasoning_parser, options.tool_call_parser)
        settings = Settings.load(redis_url)
    except (ValueError, InvalidSettings) as exc:
        raise typer.BadParameter(str(exc)) from None
    if drain_timeout is not None:
        settings.drain_timeout = drain_timeout
    configure_logging(log_level)
    tracing.configure("queuechat-worker")
    serve(options, settings)


def _engine_args(pairs: list[str] | None) -> dict[str, Any]:
    from workers.engines.vllm_setup import parse_engine_args

    try:
        return parse_engine_args(pairs or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def main() -> None:
    typer.run(worker_command)
