"""Registry credentials against real registries: htpasswd (Basic) and token (Bearer)
auth of Debian's docker-registry, `kronk registry login/logout`, and docker's config.json."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kronk.models.oci import RegistryAuthError, pull_model, push_model
from kronk.models.oci.auth import parse_challenge
from kronk.models.store import ModelStore
from support.registry import Registry, running_registry
from test_cli import kronk as run_kronk

USERS = {"alice": "s3cret pass", "bob": "hunter2"}


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("basic-registry")
    with running_registry(folder, auth="htpasswd", users=USERS) as running:
        yield running


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("token-registry")
    with running_registry(folder, auth="token", users=USERS) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path, tiny_llama_path: Path) -> ModelStore:
    models = ModelStore(tmp_path / "home", retry_backoff=0.01)
    models.import_path(tiny_llama_path, model_id="tiny")
    return models


def kronk(*args: object, home: Path, docker: Path | None = None, input: str | None = None) -> Any:
    env = {"DOCKER_CONFIG": str(docker or home / "no-docker")}
    return run_kronk(*args, home=home, env=env, input=input)


def last_line(result: Any) -> str:
    return str(result.stderr.strip().splitlines()[-1])


def test_basic_auth_login_push_pull_logout(
    basic_registry: Registry, store: ModelStore, tmp_path: Path
) -> None:
    home = store.home.root
    host = basic_registry.host
    target = f"{host}/private/tiny:1"

    refused = kronk("model", "push", "tiny", target, "--insecure", home=home)
    assert refused.exit_code == 1
    assert "needs credentials" in last_line(refused)
    assert f"kronk registry login {host}" in last_line(refused)

    wrong = kronk(
        "registry", "login", host, "-u", "alice", "--password-stdin", "--insecure",
        home=home, input="not it\n",
    )  # fmt: skip
    assert wrong.exit_code == 1 and "refused the credentials" in last_line(wrong)
    auth_file = home / "registry-auth.json"
    assert not auth_file.exists()  # nothing stored that does not work

    login = kronk(
        "registry", "login", f"http://{host}/", "-u", "alice", "--password-stdin", "--insecure",
        home=home, input=USERS["alice"] + "\n",
    )  # fmt: skip
    assert login.exit_code == 0, login.output
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    stored = json.loads(auth_file.read_text())["auths"][host]["auth"]
    assert base64.b64decode(stored).decode() == f"alice:{USERS['alice']}"

    pushed = kronk("model", "push", "tiny", target, "--insecure", home=home)
    assert pushed.exit_code == 0, pushed.output

    # Another home with no kronk login: docker's config.json is used.
    docker = tmp_path / "docker"
    docker.mkdir()
    pair = base64.b64encode(f"bob:{USERS['bob']}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"http://{host}": {"auth": pair}}}))
    other = tmp_path / "other"
    pulled = kronk("model", "pull", f"oci://{target}", "--insecure", home=other, docker=docker)
    assert pulled.exit_code == 0, pulled.output

    assert kronk("registry", "logout", host, home=home).exit_code == 0
    assert json.loads(auth_file.read_text())["auths"] == {}
    again = kronk("registry", "logout", host, home=home)
    assert again.exit_code == 1 and f"no credentials for {host}" in last_line(again)


def test_bearer_token_flow(token_registry: Registry, store: ModelStore, tmp_path: Path) -> None:
    host = token_registry.host
    assert token_registry.token_server is not None
    with pytest.raises(RegistryAuthError, match="refused anonymous access"):
        pull_model(store, f"{host}/tok/tiny:1", insecure=True)

    login = kronk(
        "registry", "login", host, "-u", "bob", "--password-stdin", "--insecure",
        home=store.home.root, input=USERS["bob"] + "\n",
    )  # fmt: skip
    assert login.exit_code == 0, login.output
    requests = token_registry.token_server.requests
    requests.clear()

    push_model(store, "tiny", f"{host}/tok/tiny:1", insecure=True)
    local = pull_model(store, f"{host}/tok/tiny:1", insecure=True, model_id="back")
    assert local.files[0].sha256 == store.get("tiny").files[0].sha256
    # One token for the whole push (push scope asked for up front, then reused), one for
    # the pull.
    push_scopes, pull_scopes = (r["scope"] for r in requests if r["user"] == "bob")
    assert "repository:tok/tiny:pull,push" in push_scopes
    assert pull_scopes == ["repository:tok/tiny:pull"]
    assert all(r["service"] == ["kronk-test-registry"] for r in requests)


def test_challenge_parsing() -> None:
    header = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"'
    assert parse_challenge(header) == (
        "bearer",
        {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull"},
    )
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert parse_challenge("") is None
