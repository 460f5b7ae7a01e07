"""`/manage/security/...` on a real server with auth `all` and real tokens: keys listed
without private material, created and deleted (revoking their tokens), tokens created
with grants, limits and a duration that then work, and non-admins refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kronk.server.security.keys import KeyStore
from kronk.server.security.tokens import create_token, parse_endpoints
from support.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manage-security-home")
    KeyStore(root / "keys").create()
    return root


@pytest.fixture(scope="module")
def srv(tiny_llama_path: Path, home: Path) -> Iterator[LiveServer]:
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}, home=home, auth="all"
    ) as s:
        yield s


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def key_ids(home: Path) -> list[str]:
    infos = KeyStore(home / "keys").keys()
    return [info.kid for info in infos]


def admin_token(home: Path) -> str:
    return create_token(KeyStore(home / "keys"), {}, duration_s=3600, admin=True)


def test_keys_are_listed_without_private_material(srv: LiveServer, home: Path) -> None:
    with srv.http() as http:
        listed = http.get("/manage/security/keys", headers=bearer(admin_token(home)))
    assert listed.status_code == 200, listed.text
    keys = listed.json()["keys"]
    on_disk = key_ids(home)
    assert [k["id"] for k in keys] == on_disk and keys[-1]["signs_new_tokens"] is True
    assert set(keys[0]) == {"id", "created", "signs_new_tokens"}
    assert "PRIVATE" not in listed.text and str(home) not in listed.text


def test_a_non_admin_token_is_refused_even_with_the_manage_grant(
    srv: LiveServer, home: Path
) -> None:
    store = KeyStore(home / "keys")
    manager = create_token(store, parse_endpoints("manage,models"), duration_s=3600)
    chatter = create_token(store, parse_endpoints("chat"), duration_s=3600)
    with srv.http() as http:
        for token in (manager, chatter):
            for method, path, body in [
                ("GET", "/manage/security/keys", None),
                ("POST", "/manage/security/keys", {}),
                ("POST", "/manage/security/tokens", {"endpoints": "chat"}),
                ("DELETE", f"/manage/security/keys/{store.keys()[0].kid}", None),
            ]:
                answer = http.request(method, path, json=body, headers=bearer(token))
                assert answer.status_code == 403, (path, answer.text)
        no_token = http.get("/manage/security/keys")
        assert no_token.status_code == 401
        message = http.get("/manage/security/keys", headers=bearer(manager)).json()
        assert "admin token" in message["error"]["message"]
    assert len(store.keys()) == 1  # nothing was created or deleted


def test_a_created_token_carries_its_grants_and_works(srv: LiveServer, home: Path) -> None:
    admin = admin_token(home)
    with srv.http() as http:
        made = http.post(
            "/manage/security/tokens",
            json={"endpoints": "models:5/minute,chat:1000/day", "duration": "2h", "subject": "ci"},
            headers=bearer(admin),
        )
        assert made.status_code == 200, made.text
        body = made.json()
        assert body["grants"] == "models:5/minute,chat:1000/day" and body["admin"] is False
        assert body["subject"] == "ci"
        token = body["token"]
        models = http.get("/v1/models", headers=bearer(token))
        assert models.status_code == 200 and models.headers["ratelimit-limit"] == "5"
        assert (
            http.post(
                "/v1/embeddings", json={"model": "tiny", "input": "x"}, headers=bearer(token)
            ).status_code
            == 403
        )  # not granted
        assert http.get("/manage/security/keys", headers=bearer(token)).status_code == 403
        bad = http.post(
            "/manage/security/tokens", json={"endpoints": "chat:5/fortnight"}, headers=bearer(admin)
        )
        assert bad.status_code == 400 and "window" in bad.json()["error"]["message"]
        nothing = http.post("/manage/security/tokens", json={}, headers=bearer(admin))
        assert nothing.status_code == 400
    audit = (home / "logs" / "audit.log").read_text()
    assert body["id"] in audit and '"source":"manage"' in audit
    assert token not in audit  # the id is written down, never the token


def test_a_created_key_signs_and_deleting_it_revokes_its_tokens(
    srv: LiveServer, home: Path
) -> None:
    admin = admin_token(home)  # signed by the first key, which stays
    with srv.http() as http:
        created = http.post("/manage/security/keys", json={}, headers=bearer(admin))
        assert created.status_code == 200, created.text
        kid = created.json()["key"]["id"]
        assert "PRIVATE" not in created.text
        made = http.post(
            "/manage/security/tokens", json={"admin": True, "duration": "1h"}, headers=bearer(admin)
        ).json()
        assert made["key_id"] == kid and made["admin"] is True
        new_admin = made["token"]
        assert http.get("/v1/models", headers=bearer(new_admin)).status_code == 200

        deleted = http.delete(f"/manage/security/keys/{kid}", headers=bearer(admin))
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert kid not in key_ids(home)
        assert http.get("/v1/models", headers=bearer(new_admin)).status_code == 401
        again = http.delete(f"/manage/security/keys/{kid}", headers=bearer(admin))
        assert again.status_code == 404
