"""``queuechat up``: the whole system on one machine, in one process tree.

It starts an embedded Valkey (unless ``--redis-url`` is given), one model worker, the API with the chat web UI
mounted at ``/ui``, and a batch worker (the Batch API's rq worker), prints where everything listens, and stops all
of it on Ctrl-C or SIGTERM. Children die with this process even when it is killed outright (PR_SET_PDEATHSIG on
Linux).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import typer

from broker.embedded import EmbeddedValkey, _die_with_parent
from broker.running import remove_running, write_running


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A process group of its own: a terminal's Ctrl-C reaches this process only, which stops the children in order
    # (a SIGINT to all at once stopped Valkey under the running streams, and a second signal makes uvicorn cut them).
    return subprocess.Popen([sys.executable, *args], env=env, preexec_fn=_die_with_parent, process_group=0)


def _stop(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM (a warm stop: drain, deregister) to each, then wait for all; kill what outlives ``timeout``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_api(url: str, api: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the API answers /health (its imports and app take seconds after the spawn)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise typer.Exit(code=api.returncode or 1)
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not answer on {url} within {timeout:.0f}s")


def _wait_for_model(redis_url: str, prefix: str, names: list[str] | None, worker: Any, timeout: float) -> list[str]:
    from broker.connection import sync_client
    from broker.keys import Keys
    from broker.registry import live_workers

    client = sync_client(redis_url)
    keys = Keys(prefix)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise typer.Exit(code=worker.returncode or 1)
        models = sorted({m for w in live_workers(client, keys) for m in w.card.models})
        if models and (not names or set(names) <= set(models)):
            return models
        time.sleep(0.5)
    raise RuntimeError(f"the worker did not come up within {timeout:.0f}s")


def up_command(
    model_path: Annotated[
        str | None, typer.Option(help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    ] = None,
    model_names: Annotated[str | None, typer.Option(help="Comma-separated names to serve the model under")] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="QUEUECHAT_REDIS_URL", help="Use this Redis instead of an embedded Valkey"),
    ] = None,
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    device: Annotated[str, typer.Option(help="Worker device: auto, cpu, cuda, mps")] = "auto",
    num_threads: Annotated[int | None, typer.Option(min=1, help="torch threads of the worker")] = None,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the model to load")] = 600.0,
    webui: Annotated[bool, typer.Option(help="Serve the chat web UI at /ui of the API's port")] = True,
    engine: Annotated[
        str | None, typer.Option(envvar="QUEUECHAT_ENGINE", help="Worker engine: transformers, vllm or auto")
    ] = None,
) -> None:
    """Run Valkey (embedded), one model worker, the API and a batch worker on this machine."""
    from broker.settings import Settings

    # running=False: another `up`'s Redis is not this one's default; without a URL, this one embeds its own
    settings = Settings.load(redis_url, running=False)
    server: EmbeddedValkey | None = None
    if not settings.redis_url:
        server = EmbeddedValkey()
        server.start()
        url = server.url
        typer.echo(f"queuechat: embedded Valkey on {url}")
    else:
        url = settings.redis_url
    # other commands of this user (`queuechat info`, a second worker) default to this Redis while this runs
    write_running(url)
    env = {**os.environ, "QUEUECHAT_REDIS_URL": url}
    worker_args = ["-m", "workers", "--redis-url", url, "--device", device]
    if model_path:
        worker_args += ["--model-path", model_path]
    if model_names:
        worker_args += ["--model-names", model_names]
    if num_threads:
        worker_args += ["--num-threads", str(num_threads)]
    if engine:
        worker_args += ["--engine", engine]
    children: dict[str, subprocess.Popen[bytes]] = {}

    def shutdown(*_: Any) -> None:
        # A second Ctrl-C or SIGTERM must not cut the orderly stop short. In order: the API (it stops accepting and
        # lets open streams finish while the worker still generates them), then the workers (they drain and
        # deregister), then Valkey, which all of them need until they are gone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grace = settings.drain_timeout + 10
        _stop([children[n] for n in ("api",) if n in children], grace)
        _stop([children[n] for n in ("worker", "batch-worker") if n in children], grace)
        if server is not None:
            server.stop()
        remove_running()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT explicitly too: a process started in the background inherits SIGINT ignored, and Ctrl-C must still work
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker = children["worker"] = _spawn(worker_args, env)
        typer.echo("queuechat: loading the model (the default model is converted once on first use)…")
        names = [n.strip() for n in model_names.split(",")] if model_names else None
        models = _wait_for_model(url, settings.key_prefix, names, worker, startup_timeout)
        api_args = ["-m", "queuechat", "api", "--host", host, "--port", str(port), "--redis-url", url]
        api = children["api"] = _spawn([*api_args, "--webui"] if webui else api_args, env)
        # the Batch API's runner: files and results go to QUEUECHAT_FILES_DIR (default under ~/.cache/queuechat)
        children["batch-worker"] = _spawn(["-m", "queuechat", "batch-worker", "--redis-url", url], env)
        # said once the API answers, not when it is spawned: its imports take seconds (half a minute on a slow box)
        local = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
        _wait_for_api(f"http://{local}:{port}", api, startup_timeout)
        typer.echo(f"queuechat: serving {', '.join(models)}")
        typer.echo(f"queuechat: OpenAI API on http://{host}:{port}/v1  (Ctrl-C stops everything)")
        if webui:
            typer.echo(f"queuechat: chat web UI on http://{host}:{port}/ui")
        typer.echo("queuechat: watch queues and workers with: queuechat info -i 2 (other commands find this Redis)")
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        name, failed = next((n, c) for n, c in children.items() if c.poll() is not None)
        typer.echo(f"queuechat: the {name} exited with {failed.returncode}; stopping", err=True)
        raise typer.Exit(code=1)
    except KeyboardInterrupt:
        typer.echo("queuechat: stopping…")
    finally:
        shutdown()
