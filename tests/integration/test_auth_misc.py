"""API keys, request ids, CORS, one model by id, /version and FastChat's token_check."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest
from openai import OpenAI

from api.auth import key_matches
from api.cors import CorsOptions
from broker.settings import Settings
from tests.conftest import ApiServer, RunningWorker, Stack, wait_for

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def keyed(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> ApiServer:
    start_worker()
    api = start_api(settings.model_copy(update={"api_keys": ["sk-one", "sk-two"]}))
    auth = {"Authorization": "Bearer sk-two"}
    wait_for(lambda: httpx.get(f"{api.base_url}/v1/models", headers=auth).json()["data"])
    return api


def assert_openai_error(r: httpx.Response, status: int, code: str | None) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    return dict(error)


def test_every_key_works_with_the_openai_client(keyed: ApiServer) -> None:
    for key in ("sk-one", "sk-two"):
        c = OpenAI(base_url=f"{keyed.base_url}/v1", api_key=key, max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
        assert r.choices[0].finish_reason == "length"


def test_a_wrong_key_is_a_401_the_client_understands(keyed: ApiServer) -> None:
    c = OpenAI(base_url=f"{keyed.base_url}/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as info:
        c.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "sk-one"}, {"Authorization": "Basic sk-one"}, {"Authorization": "Bearer"}],
    ids=["none", "no scheme", "basic", "bearer alone"],
)
def test_a_missing_key_is_a_401(keyed: ApiServer, headers: dict[str, str]) -> None:
    error = assert_openai_error(httpx.get(f"{keyed.base_url}/v1/models", headers=headers), 401, None)
    assert "Authorization: Bearer" in str(error["message"])


def test_every_route_is_guarded_but_health_and_docs(keyed: ApiServer) -> None:
    base = keyed.base_url
    wrong = {"Authorization": "Bearer sk-one-but-longer"}
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models/tiny"),
        ("GET", "/version"),
        ("POST", "/api/v1/token_check"),
        ("GET", "/no/such/route"),  # an unauthenticated client learns nothing of which paths exist
    ]:
        assert_openai_error(httpx.request(method, base + path, headers=wrong, json={}), 401, "invalid_api_key")
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "queuechat"
    assert httpx.get(f"{base}/docs").status_code == 200


def test_keys_are_compared_against_every_key() -> None:
    keys = [b"sk-one", b"sk-two"]
    assert key_matches(b"sk-two", keys)
    assert key_matches(b"sk-one", keys)
    assert not key_matches(b"sk-on", keys)
    assert not key_matches(b"sk-three", keys)
    assert not key_matches(b"", keys)


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUECHAT_API_KEYS", "sk-a, sk-b,,")
    settings = Settings()
    assert settings.api_keys == ["sk-a", "sk-b"]
    assert "sk-a" not in repr(settings)  # secrets never reach a log line


def test_without_keys_the_api_is_open(stack: Stack) -> None:
    assert httpx.get(f"{stack.base_url}/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_request_id_is_echoed_or_made(keyed: ApiServer) -> None:
    auth = {"Authorization": "Bearer sk-one"}
    r = httpx.get(f"{keyed.base_url}/v1/models", headers={**auth, "X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = httpx.get(f"{keyed.base_url}/v1/models", headers=auth).headers["x-request-id"]
    assert made.startswith("req_")
    insane = httpx.get(f"{keyed.base_url}/v1/models", headers={**auth, "X-Request-Id": "a b;c" * 50})
    assert insane.headers["x-request-id"].startswith("req_")
    # errors carry it too: a 401, a 404 and a validation error
    assert httpx.get(f"{keyed.base_url}/v1/models", headers={"X-Request-Id": "r1"}).headers["x-request-id"] == "r1"
    missing = httpx.get(f"{keyed.base_url}/v1/models/nope", headers={**auth, "X-Request-Id": "r2"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r2"
    bad = httpx.post(f"{keyed.base_url}/v1/chat/completions", headers={**auth, "X-Request-Id": "r3"}, json={})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "r3"


def test_models_by_id(stack: Stack) -> None:
    c = OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    model = c.models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        c.models.retrieve("org/absent")
    assert info.value.code == "model_not_found"
    body = httpx.get(f"{stack.base_url}/v1/models/org/absent").json()["error"]
    assert body["param"] == "model" and body["type"] == "invalid_request_error"


def test_version(stack: Stack) -> None:
    """The version the project declares, on /version and in the OpenAPI document alike."""
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    r = httpx.get(f"{stack.base_url}/version")
    assert r.json() == {"version": declared}
    assert r.json()["version"][0].isdigit()
    assert httpx.get(f"{stack.base_url}/openapi.json").json()["info"]["version"] == declared


def test_token_check_counts_with_the_model_tokenizer(stack: Stack) -> None:
    prompts = [
        {"model": "tiny", "prompt": "Hello there, how are you?", "max_tokens": 10},
        {"model": "tiny", "prompt": "Hi", "max_tokens": 10**6},
    ]
    r = httpx.post(f"{stack.base_url}/api/v1/token_check", json={"prompts": prompts}, timeout=30)
    assert r.status_code == 200, r.text
    first, second = r.json()["prompts"]
    usage = httpx.post(
        f"{stack.base_url}/v1/completions",
        json={"model": "tiny", "prompt": prompts[0]["prompt"], "max_tokens": 1},
        timeout=30,
    ).json()["usage"]
    assert first["tokenCount"] == usage["prompt_tokens"]
    assert first["contextLength"] == second["contextLength"] > 0
    assert first["fits"] is True and second["fits"] is False
    assert second["tokenCount"] < first["tokenCount"]


def test_token_check_of_an_unknown_model_is_a_404(stack: Stack) -> None:
    r = httpx.post(
        f"{stack.base_url}/api/v1/token_check",
        json={"prompts": [{"model": "nope", "prompt": "x", "max_tokens": 1}]},
        timeout=30,
    )
    assert_openai_error(r, 404, "model_not_found")


def test_cors_is_off_by_default(stack: Stack) -> None:
    r = httpx.get(f"{stack.base_url}/v1/models", headers={"Origin": "https://example.com"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_flags(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    start_worker()
    keyed = settings.model_copy(update={"api_keys": ["sk-one"]})
    api = start_api(keyed, CorsOptions(allowed_origins=["https://chat.example"], allowed_methods=["GET", "POST"]))
    preflight = httpx.options(
        f"{api.base_url}/v1/chat/completions",
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200  # a preflight carries no key, and needs none
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    # a 401 is readable by the page, so it can tell its user the key is wrong
    denied = httpx.get(f"{api.base_url}/v1/models", headers={"Origin": "https://chat.example"})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "https://chat.example"
    other = httpx.get(
        f"{api.base_url}/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer sk-one"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_with_keys_the_mounted_web_ui_asks_for_a_key_on_its_login_page(
    settings: Settings, start_worker: Callable[..., RunningWorker], start_api: Callable[..., ApiServer]
) -> None:
    start_worker()
    api = start_api(settings.model_copy(update={"api_keys": ["sk-one"]}), webui=True)
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        assert http.get("/v1/models").status_code == 401  # the API still wants the Bearer key
        assert http.get("/ui/").status_code == 200  # the UI answers with its login page, not the API's 401
        assert http.get("/ui/config").status_code == 401  # and holds everything else behind the login
        assert http.post("/ui/login", data={"username": "me", "password": "sk-wrong"}).status_code == 400
        assert http.post("/ui/login", data={"username": "me", "password": "sk-one"}).status_code == 200
        assert http.get("/ui/config").status_code == 200  # the session cookie now opens it
