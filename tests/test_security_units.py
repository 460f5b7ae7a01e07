"""Security pieces without a server: the path table, keys, tokens, limits, audit, CLI."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.routing import BaseRoute, Mount, Route
from typer.testing import CliRunner

from kronk.cli.main import app as cli
from kronk.errors import ConfigError
from kronk.models.resolver import StaticResolver
from kronk.pool import ModelPool
from kronk.server.app import create_app
from kronk.server.security.audit import AuditLog
from kronk.server.security.browser import BrowserPolicy, is_json
from kronk.server.security.families import FAMILIES, family_for, is_open
from kronk.server.security.keys import KeyStore
from kronk.server.security.limits import RateLimiter, window_bounds
from kronk.server.security.tokens import (
    Limit,
    TokenError,
    create_token,
    parse_duration,
    parse_endpoints,
    verify_token,
)
from kronk.server.settings import ServerSettings

# -- the path table --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/chat/completions", "chat"),
        ("/chat/completions", "chat"),
        ("/v1/messages", "chat"),
        ("/v1/messages/count_tokens", "chat"),
        ("/api/chat", "chat"),
        ("/v1/responses", "responses"),
        ("/responses/input_tokens", "responses"),
        ("/v1/completions", "completions"),
        ("/api/generate", "completions"),
        ("/v1/embeddings", "embeddings"),
        ("/embeddings", "embeddings"),
        ("/api/embed", "embeddings"),
        ("/api/embeddings", "embeddings"),
        ("/v1/tokenize", "tokenize"),
        ("/detokenize", "tokenize"),
        ("/v1/models", "models"),
        ("/v1/models/some/model", "models"),
        ("/api/tags", "models"),
        ("/api/ps", "models"),
        ("/api/show", "models"),
        ("/api/version", "models"),
        ("/api/pull", "manage"),
        ("/api/delete", "manage"),
        ("/api/copy", "manage"),
        ("/manage/models/x", "manage"),
        ("/metrics", "metrics"),
        ("/v1/modelsx", None),
        ("/health", None),
    ],
)
def test_every_path_has_its_family(path: str, family: str | None) -> None:
    assert family_for(path) == family


def _route_paths(routes: Sequence[BaseRoute]) -> set[str]:
    # FastAPI keeps included routers as one route each; their own routes are inside.
    out: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out |= _route_paths(inner.routes)
        elif isinstance(route, Route | Mount):
            out.add(route.path)
    return out


def test_every_route_of_the_app_is_in_the_table_or_open(tiny_llama_path: Path) -> None:
    # A route added without a row would be open in `manage` mode: this catches it.
    app = create_app(
        ModelPool(StaticResolver({})), settings=ServerSettings(home=tiny_llama_path.parent)
    )
    paths = _route_paths(app.routes)
    assert "/v1/chat/completions" in paths
    missing = sorted(p for p in paths if family_for(p) is None and not is_open(p))
    assert missing == []
    assert is_open("/health") and is_open("/health/ready") and not is_open("/metrics")


# -- keys and tokens ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keys = KeyStore(tmp_path / "home" / "keys")
    keys.create()
    return keys


def test_key_files_are_private_and_the_newest_signs(store: KeyStore) -> None:
    second = store.create()
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    for info in store.keys():  # noqa: SIM118 (a KeyStore, not a dict)
        assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert store.keys()[-1].kid == second.kid
    token = create_token(store, {"chat": ()}, duration_s=60)
    assert jwt.get_unverified_header(token)["kid"] == second.kid
    assert not list(store.folder.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_a_good_token_verifies_with_its_grants(store: KeyStore) -> None:
    grants = parse_endpoints("chat:1000/day,chat:10/minute,embeddings:unlimited")
    caller = verify_token(store, create_token(store, grants, duration_s=60, subject="ci"))
    assert caller.subject == "ci" and not caller.admin
    assert caller.grants["chat"] == (Limit(1000, "day"), Limit(10, "minute"))
    assert caller.may("embeddings") and not caller.may("manage")
    admin = verify_token(store, create_token(store, {}, duration_s=60, admin=True))
    assert admin.admin and all(admin.may(f) for f in FAMILIES)


def test_bad_tokens_are_refused(store: KeyStore, tmp_path: Path) -> None:
    good = create_token(store, {"chat": ()}, duration_s=60)
    expired = create_token(store, {"chat": ()}, duration_s=60, now=lambda: time.time() - 3600)
    early = create_token(store, {"chat": ()}, duration_s=7200, not_before=time.time() + 3600)
    head, body, sig = good.split(".")
    tampered_claims = json.loads(jwt.utils.base64url_decode(body))
    tampered_claims["grants"] = {"manage": []}
    tampered = ".".join(
        [head, jwt.utils.base64url_encode(json.dumps(tampered_claims).encode()).decode(), sig]
    )
    other = KeyStore(tmp_path / "other")
    other_kid = other.create().kid
    # Same kid, another key: a forged signature.
    forged = jwt.encode(
        jwt.decode(good, options={"verify_signature": False}),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": jwt.get_unverified_header(good)["kid"]},
    )
    wrong_key = create_token(other, {"chat": ()}, duration_s=60)
    hs256 = jwt.encode({"iss": "kronk"}, "s" * 32, algorithm="HS256", headers={"kid": other_kid})
    reasons = {}
    for name, token in {
        "expired": expired, "early": early, "tampered": tampered, "forged": forged,
        "wrong_key": wrong_key, "hs256": hs256, "garbage": "not.a.token", "empty": "",
    }.items():  # fmt: skip
        with pytest.raises(TokenError) as err:
            verify_token(store, token)
        reasons[name] = str(err.value)
    assert "expired" in reasons["expired"] and "not valid yet" in reasons["early"]
    assert "signature" in reasons["tampered"] and "signature" in reasons["forged"]
    assert "key" in reasons["wrong_key"]
    assert good not in " ".join(reasons.values())  # messages never quote the token
    verify_token(store, good)  # and the good one still passes


def test_deleting_a_key_revokes_its_tokens(store: KeyStore) -> None:
    token = create_token(store, {"chat": ()}, duration_s=60)
    kid = jwt.get_unverified_header(token)["kid"]
    verify_token(store, token)  # cached now: deletion must still be seen
    assert store.delete(kid) and not store.delete(kid)
    with pytest.raises(TokenError, match="revoked"):
        verify_token(store, token)


def test_grant_and_duration_syntax() -> None:
    assert parse_duration("720h") == 720 * 3600 and parse_duration("1h30m") == 5400
    assert parse_endpoints("tokenize") == {"tokenize": ()}
    for bad in ("chat:0/day", "chat:5/fortnight", "shell:unlimited", "chat:x", ""):
        with pytest.raises(ConfigError):
            parse_endpoints(bad)
    for bad in ("", "10", "h", "5w", "0h", "1h 2m"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


# -- rate limits -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_window_rolls_over(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)  # 2027-01-15T08:00:00Z, a minute boundary
    limiter = RateLimiter(tmp_path / "limits.db", clock=clock)
    limits = [Limit(2, "minute"), Limit(3, "hour")]
    assert [limiter.hit("t", "chat", limits).allowed for _ in range(3)] == [True, True, False]
    refused = limiter.hit("t", "chat", limits)
    assert refused.retry_after_s == 60 and refused.remaining == 0
    clock.now += 60  # the next minute: one more fits the hour
    assert limiter.hit("t", "chat", limits).allowed
    hour_full = limiter.hit("t", "chat", limits)
    assert not hour_full.allowed and hour_full.retry_after_s == 3600 - 60
    clock.now += 3600
    assert limiter.hit("t", "chat", limits).allowed
    assert limiter.hit("other", "chat", limits).allowed  # counted per token


def test_month_windows_are_calendar_months() -> None:
    start, end = window_bounds("month", 1_801_000_000.0)  # late January 2027
    assert time.gmtime(start)[:3] == (2027, 1, 1) and time.gmtime(end)[:3] == (2027, 2, 1)
    start, end = window_bounds("month", 1_796_600_000.0)  # December 2026
    assert time.gmtime(end)[:3] == (2027, 1, 1)


def test_counts_are_atomic_across_threads_and_kept_when_reopened(tmp_path: Path) -> None:
    path = tmp_path / "limits.db"
    limiter = RateLimiter(path)
    second = RateLimiter(path)  # another server process on the same home
    limits = [Limit(50, "day")]
    results: list[bool] = []

    def worker(lim: RateLimiter) -> None:
        for _ in range(20):
            results.append(lim.hit("t", "embeddings", limits).allowed)

    threads = [threading.Thread(target=worker, args=(lim,)) for lim in (limiter, second) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 50 and len(results) == 120
    limiter.close()
    second.close()
    reopened = RateLimiter(path)
    assert not reopened.hit("t", "embeddings", limits).allowed
    assert reopened.hit("t", "embeddings", [Limit(51, "day")]).remaining == 0
    assert (
        path.with_name("limits.db-wal").exists()
        or reopened._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    )


# -- audit log, browser policy -------------------------------------------------------------


def test_audit_log_rotates_and_stays_json(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "logs" / "audit.log", max_bytes=400, backups=2)
    for n in range(30):
        audit.record("auth_failed", n=n, path="/v1/models")
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in files:
        for line in (tmp_path / "logs" / name).read_text().splitlines():
            assert json.loads(line)["event"] == "auth_failed"
    assert json.loads((tmp_path / "logs" / "audit.log").read_text().splitlines()[-1])["n"] == 29


def test_audit_log_never_creates_a_missing_home(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "nothing" / "logs" / "audit.log")
    audit.record("manage", path="/api/pull")  # no exception
    assert not (tmp_path / "nothing").exists()


def test_browser_policy() -> None:
    policy = BrowserPolicy.build("127.0.0.1", 11435, ["https://app.example", "http://lan:*"])
    assert policy.origin_allowed("http://127.0.0.1:11435")
    assert policy.origin_allowed("http://localhost:11435/")
    assert policy.origin_allowed("https://app.example") and policy.origin_allowed("http://lan:9")
    for bad in ("https://evil.example", "null", "http://127.0.0.1:8080", "http://localhost"):
        assert not policy.origin_allowed(bad), bad
    for host in ("127.0.0.1:11435", "localhost", "[::1]:11435", "127.0.0.2", None, "app.example"):
        assert policy.host_allowed(host), host
    for host in ("evil.example:11435", "localhost.evil.example", "10.0.0.1", ""):
        assert not policy.host_allowed(host), host
    lan = BrowserPolicy.build("0.0.0.0", 11435, [])
    assert lan.host_allowed("anything")
    # Off loopback, the UI is same-origin by whatever address it was reached at.
    assert lan.origin_allowed("http://192.168.1.5:11435", "192.168.1.5:11435")
    assert not lan.origin_allowed("http://evil.example", "192.168.1.5:11435")
    assert not policy.origin_allowed("http://evil.example:11435", "evil.example:11435")
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    assert is_json("application/vnd.api+json")
    for bad in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                "text/json", "application/+json", "application/jsonx"):  # fmt: skip
        assert not is_json(bad), bad


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_keys_and_tokens(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    created = runner.invoke(cli, ["security", "key", "create", "--home", str(home)])
    assert created.exit_code == 0, created.output
    kid = created.stdout.strip()
    store = KeyStore(home / "keys")
    admin_file = home / "keys" / "admin.token"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    assert verify_token(store, admin_file.read_text().strip()).may("manage")
    made = runner.invoke(
        cli,
        ["security", "token", "create", "--endpoints", "chat:5/minute,models",
         "--duration", "2h", "--home", str(home)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert made.stdout == token + "\n"  # the token alone on stdout
    caller = verify_token(store, token)
    assert caller.grants == {"chat": (Limit(5, "minute"),), "models": ()}
    listed = runner.invoke(cli, ["security", "key", "list", "--home", str(home)])
    assert kid in listed.stdout and "signs new tokens" in listed.stdout
    log = (home / "logs" / "audit.log").read_text()
    assert token not in log and token.split(".")[2] not in log and "token_created" in log
    refused = runner.invoke(cli, ["security", "token", "create", "--home", str(home)])
    assert refused.exit_code != 0 and refused.stdout == ""
    deleted = runner.invoke(cli, ["security", "key", "delete", kid, "--home", str(home)])
    assert deleted.exit_code == 0 and not admin_file.exists()
    with pytest.raises(TokenError):
        verify_token(store, token)
    missing = runner.invoke(cli, ["security", "key", "delete", kid, "--home", str(home)])
    assert missing.exit_code == 1
    no_key = runner.invoke(cli, ["security", "token", "create", "--admin", "--home", str(home)])
    assert no_key.exit_code == 1 and no_key.stdout == ""


def test_server_start_refuses_open_mode_off_loopback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["server", "start", "--host", "0.0.0.0", "--home", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "--insecure" in result.output and "open" in result.output


def test_require_grant_for_checks_inside_a_route(store: KeyStore) -> None:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    from kronk.server.security import require_grant
    from kronk.server.security.middleware import CALLER_KEY, MODE_KEY

    chat = verify_token(store, create_token(store, parse_endpoints("chat"), duration_s=60))
    tools = verify_token(store, create_token(store, parse_endpoints("chat,tools"), duration_s=60))
    base = {"type": "http", "headers": []}
    require_grant(Request({**base, MODE_KEY: "all", CALLER_KEY: tools}), "tools")
    require_grant(Request({**base, MODE_KEY: "manage", CALLER_KEY: None}), "tools")
    for caller in (chat, None):
        with pytest.raises(HTTPException) as err:
            require_grant(Request({**base, MODE_KEY: "all", CALLER_KEY: caller}), "tools")
        assert err.value.status_code == 403
