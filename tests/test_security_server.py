"""A real server with real tokens: modes, refusals in each protocol's shape, rate limits,
what a hostile web page can send, and a fuzz of credential headers."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kronk.server.security.keys import KeyStore
from kronk.server.security.tokens import create_token, parse_endpoints
from support.live_server import LiveServer, live_server

CHAT_BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
TOKENIZE_BODY = {"model": "tiny", "content": "hello"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security-home")
    KeyStore(root / "keys").create()
    return root


def token(home: Path, endpoints: str | None = None, *, admin: bool = False, **kw: Any) -> str:
    grants = parse_endpoints(endpoints) if endpoints else {}
    return create_token(KeyStore(home / "keys"), grants, duration_s=3600, admin=admin, **kw)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def all_srv(tiny_llama_path: Path, home: Path) -> Iterator[LiveServer]:
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}, home=home, auth="all"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def manage_srv(tiny_llama_path: Path, home: Path) -> Iterator[LiveServer]:
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}, home=home, auth="manage"
    ) as s:
        yield s


# -- auth=all -----------------------------------------------------------------------------


def test_health_stays_open_and_everything_else_needs_a_token(all_srv: LiveServer) -> None:
    with all_srv.http() as http:
        assert http.get("/health").status_code == 200
        assert http.get("/health/ready").status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/api/ps"),
            ("GET", "/metrics"),
            ("GET", "/docs"),
            ("GET", "/v1/nothing"),
        ]:
            response = http.request(method, path)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_refusals_come_in_each_protocols_shape(all_srv: LiveServer, home: Path) -> None:
    chat_only = token(home, "chat")
    with all_srv.http() as http:
        openai_ = http.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
        anthropic_ = http.post("/v1/messages", json={})
        ollama_ = http.post("/api/embed", json={"model": "tiny", "input": "x"})
        forbidden = http.post(
            "/v1/embeddings", json={"model": "tiny", "input": "x"}, headers=bearer(chat_only)
        )
        forbidden_ollama = http.post(
            "/api/embed", json={"model": "tiny", "input": "x"}, headers={"x-api-key": chat_only}
        )
    assert openai_.status_code == 401 and openai_.json()["error"]["type"]
    assert openai_.json()["error"]["code"] == "invalid_api_key"
    assert anthropic_.status_code == 401
    assert anthropic_.json()["type"] == "error"
    assert anthropic_.json()["error"]["type"] == "authentication_error"
    assert ollama_.status_code == 401 and isinstance(ollama_.json()["error"], str)
    # A chat-only token cannot embed, in either protocol.
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "missing_grant"
    assert forbidden_ollama.status_code == 403 and "embeddings" in forbidden_ollama.json()["error"]


def test_a_chat_token_chats_through_every_protocol(all_srv: LiveServer, home: Path) -> None:
    chat_only = token(home, "chat")
    client = all_srv.openai(api_key=chat_only)
    reply = client.chat.completions.create(
        model="tiny", messages=CHAT_BODY["messages"], max_tokens=1
    )
    assert reply.choices[0].message is not None
    message = all_srv.anthropic(api_key=chat_only).messages.create(
        model="tiny", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.type == "message"
    with all_srv.http() as http:
        ollama_ = http.post(
            "/api/chat",
            json={
                "model": "tiny",
                "messages": CHAT_BODY["messages"],
                "stream": False,
                "options": {"num_predict": 1},
            },
            headers=bearer(chat_only),
        )
        no_models = http.get("/v1/models", headers=bearer(chat_only))
    assert ollama_.status_code == 200, ollama_.text
    assert no_models.status_code == 403


def test_bad_tokens_get_401(all_srv: LiveServer, home: Path) -> None:
    import time

    good = token(home, "models")
    other = KeyStore(home / "other-keys")
    other.create()
    head, body, sig = good.split(".")
    bad = {
        "expired": token(home, "models", now=lambda: time.time() - 7200),
        "not_yet_valid": token(home, "models", not_before=time.time() + 3600),
        "tampered": f"{head}.{body[:-4]}AAAA.{sig}",
        "wrong_key": create_token(other, {"models": ()}, duration_s=60),
        "malformed": "abc.def",
    }
    with all_srv.http() as http:
        assert http.get("/v1/models", headers=bearer(good)).status_code == 200
        for name, value in bad.items():
            response = http.get("/v1/models", headers=bearer(value))
            assert response.status_code == 401, (name, response.text)


def test_revoked_tokens_get_401(all_srv: LiveServer, home: Path) -> None:
    store = KeyStore(home / "keys")
    newest = store.create()  # signs from now on
    signed = token(home, "models")
    with all_srv.http() as http:
        assert http.get("/v1/models", headers=bearer(signed)).status_code == 200
        store.delete(newest.kid)
        revoked = http.get("/v1/models", headers=bearer(signed))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]


def test_fuzzed_credentials_never_give_a_500(all_srv: LiveServer, home: Path) -> None:
    rng = random.Random(12)
    good = token(home, "models")
    alphabet = "abcXYZ019-_.=+/ \t:;,\"'{}\\\x7f\xe9\xff"
    values = [
        "",
        " ",
        "Bearer",
        "Bearer ",
        "bearer  x",
        "Basic dXNlcjpwYXNz",
        "Bearer " + "a" * 9000,
        "Bearer a.b.c",
        "Bearer ..",
        "Bearer " + good[:-1],
        "Bearer " + good + "x",
        "Bearer " + good.replace(".", "..", 1),
        "Bearer eyJhbGciOiJub25lIn0.e30.",
        "Bearer " + good.split(".")[0] + ".e30." + good.split(".")[2],
    ]
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(60)]
    values += ["Bearer " + "".join(rng.choice(good) for _ in range(len(good))) for _ in range(20)]
    host, port = all_srv.base_url.removeprefix("http://").split(":")
    for value in values:
        for name in ("authorization", "x-api-key"):
            status = raw_get(host, int(port), "/v1/models", f"{name}: {value}".encode("latin-1"))
            assert status in (400, 401), (name, value, status)


def raw_get(host: str, port: int, path: str, header: bytes) -> int:
    """The status of a GET with one header sent as is (httpx refuses some of the bytes
    a fuzz wants to send)."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
            + header
            + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_rate_limit_admits_exactly_the_grant_under_concurrency(
    all_srv: LiveServer, home: Path
) -> None:
    limited = token(home, "tokenize:100/minute")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=all_srv.base_url, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/tokenize", json=TOKENIZE_BODY, headers=bearer(limited))
                    for _ in range(200)
                )
            )

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 100 and statuses.count(429) == 100
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-limit"] == "100"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_rate_limit_windows_roll_over_and_429s_are_in_shape(
    all_srv: LiveServer, home: Path
) -> None:
    limiter = all_srv.app.state.security.limiter
    real_clock = limiter.clock
    now = [1_800_000_000.0]  # a minute boundary
    limiter.clock = lambda: now[0]
    limited = token(home, "chat:1/minute")
    try:
        with all_srv.http() as http:
            body = {"model": "tiny", "max_tokens": 1, "messages": CHAT_BODY["messages"]}
            first = http.post("/v1/messages", json=body, headers={"x-api-key": limited})
            second = http.post("/v1/messages", json=body, headers={"x-api-key": limited})
            ollama_ = http.post(
                "/api/chat", json={**body, "stream": False}, headers=bearer(limited)
            )
            now[0] += 60
            third = http.post("/v1/messages", json=body, headers={"x-api-key": limited})
    finally:
        limiter.clock = real_clock
    assert first.status_code == 200, first.text
    assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
    assert second.headers["retry-after"] == "60"
    assert ollama_.status_code == 429 and isinstance(ollama_.json()["error"], str)
    assert third.status_code == 200, third.text


def test_a_restart_keeps_the_counters(tiny_llama_path: Path, tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys").create()
    limited = token(tmp_path, "models:3/day")
    statuses = []
    for _ in range(2):
        with (
            live_server({"tiny": tiny_llama_path}, home=tmp_path, auth="all") as srv,
            srv.http() as http,
        ):
            statuses += [
                http.get("/v1/models", headers=bearer(limited)).status_code for _ in range(2)
            ]
    assert statuses == [200, 200, 200, 429]


def test_audit_log_has_failures_and_manage_actions_but_no_secrets(
    all_srv: LiveServer, home: Path
) -> None:
    admin = token(home, admin=True)
    with all_srv.http() as http:
        http.get("/v1/models", headers=bearer("not-a-token-SECRET"))
        http.post("/api/copy", json={"source": "nope", "destination": "x"}, headers=bearer(admin))
    entries = [json.loads(line) for line in (home / "logs" / "audit.log").read_text().splitlines()]
    events = {e["event"] for e in entries}
    assert {"auth_failed", "manage"} <= events
    manage = [e for e in entries if e["event"] == "manage" and e["path"] == "/api/copy"]
    assert manage and manage[-1]["token_id"] and manage[-1]["status"] >= 400
    text = (home / "logs" / "audit.log").read_text()
    assert "SECRET" not in text and admin.split(".")[2] not in text


# -- auth=manage --------------------------------------------------------------------------


def test_manage_mode_leaves_inference_open_and_hides_paths(
    manage_srv: LiveServer, home: Path
) -> None:
    admin = token(home, admin=True)
    chat_only = token(home, "chat,models")
    with manage_srv.http() as http:
        chat = http.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer("placeholder"))
        pull = http.post("/api/pull", json={"model": "x"})
        pull_user = http.post("/api/pull", json={"model": "x"}, headers=bearer(chat_only))
        delete = http.request("DELETE", "/api/delete", json={"model": "x"}, headers=bearer(admin))
        anonymous_ps = http.get("/api/ps").json()["models"]
        admin_ps = http.get("/api/ps", headers=bearer(admin)).json()["models"]
        show = http.post("/api/show", json={"model": "tiny"}).json()
        admin_show = http.post("/api/show", json={"model": "tiny"}, headers=bearer(admin)).json()
        metrics = http.get("/metrics")
    assert chat.status_code == 200, chat.text  # a placeholder key on an open endpoint is fine
    assert pull.status_code == 401 and isinstance(pull.json()["error"], str)
    assert pull_user.status_code == 403
    assert delete.status_code == 404, delete.text  # admitted: the model just isn't there
    assert anonymous_ps and all("path" not in m for m in anonymous_ps)
    assert str(manage_srv.pool.loaded()[0].path) not in json.dumps(anonymous_ps)
    assert all("path" in m for m in admin_ps)
    assert "/" not in show["modelfile"] and "gguf" in admin_show["modelfile"]
    assert metrics.status_code == 200


# -- what a hostile web page can send, in every mode ----------------------------------------


@pytest.mark.parametrize("mode", ["open", "manage", "all"])
def test_hostile_web_page_requests_are_refused(
    mode: str, tiny_llama_path: Path, home: Path
) -> None:
    admin = token(home, admin=True)
    body = json.dumps(CHAT_BODY)
    with live_server(
        {"tiny": tiny_llama_path},
        home=home,
        auth=mode,  # type: ignore[arg-type]
        allowed_origins=("https://friend.example",),
    ) as srv:
        own = srv.base_url
        port = own.rsplit(":", 1)[1]
        with srv.http() as http:
            # A form or fetch() "simple" request: text/plain, form encoding, a typeless Blob.
            for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"origin": "https://evil.example", **bearer(admin)}
                if ctype:
                    headers["content-type"] = ctype
                refused = http.post("/v1/chat/completions", content=body, headers=headers)
                assert refused.status_code in (403, 415), refused.text
                same_origin_plain = http.post(
                    "/v1/chat/completions",
                    content=body,
                    headers={"content-type": ctype or "", **bearer(admin)},
                )
                assert same_origin_plain.status_code == 415
            # A foreign origin with a proper JSON body (after a preflight it would fail).
            foreign = http.post(
                "/api/pull",
                json={"model": "x"},
                headers={"origin": "https://evil.example", **bearer(admin)},
            )
            assert foreign.status_code == 403
            assert foreign.json()["error"]  # Ollama's shape: a string
            preflight = http.options(
                "/v1/chat/completions",
                headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
            )
            assert preflight.status_code == 403
            assert "access-control-allow-origin" not in preflight.headers
            get_foreign = http.get("/v1/models", headers={"origin": "null", **bearer(admin)})
            assert get_foreign.status_code == 403
            # DNS rebinding: the page's own name, pointed at 127.0.0.1.
            rebound = http.get(
                "/v1/models", headers={"host": f"evil.example:{port}", **bearer(admin)}
            )
            assert (
                rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
            )
            rebound_health = http.get("/health", headers={"host": "evil.example"})
            assert rebound_health.status_code == 403
            # The server's own UI and an allowed origin work, with CORS answers.
            for origin in (own, "https://friend.example"):
                ok = http.options(
                    "/v1/chat/completions",
                    headers={
                        "origin": origin,
                        "access-control-request-method": "POST",
                        "access-control-request-headers": "authorization, content-type",
                    },
                )
                assert ok.status_code == 204
                assert ok.headers["access-control-allow-origin"] == origin
                assert "authorization" in ok.headers["access-control-allow-headers"]
                listed = http.get("/v1/models", headers={"origin": origin, **bearer(admin)})
                assert listed.status_code == 200
                assert listed.headers["access-control-allow-origin"] == origin
