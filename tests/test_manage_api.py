"""The management API (`/manage/...`) on a real server: pulls from a real file server
with streamed progress and cancellation, import, verify, remove, the catalog, running
models with unload, and the server's own description."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kronk.models.store import ModelStore
from kronk.server.manage.server import redact
from support.file_server import FileServer
from support.live_server import LiveServer, live_server


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> bytes:
    return tiny_llama_path.read_bytes()


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


@pytest.fixture
def srv(tiny_llama_path: Path, tmp_path: Path) -> Iterator[LiveServer]:
    defaults = {"n_ctx": 256, "n_seq_max": 2}
    with live_server({"tiny": tiny_llama_path}, load_defaults=defaults, home=tmp_path) as s:
        yield s


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a server-sent event stream, as they arrive."""
    event = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:])
            event = "message"


def run_job(http: httpx.Client, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def test_a_pull_streams_progress_to_100_percent_then_the_model_is_listed_and_removable(
    srv: LiveServer, files: FileServer, tiny: bytes
) -> None:
    url = files.add("/Tiny-Pulled.gguf", tiny)
    with srv.http() as http:
        events = run_job(http, "/manage/pull", {"model": url, "id": "tiny-pulled"})
        names = [e for e, _ in events]
        assert names[0] == "started" and names[-1] == "done", names
        progress = [d for e, d in events if e == "progress" and d["phase"] == "download"]
        assert progress, "no download progress was streamed"
        last = progress[-1]
        assert last["bytes"] == last["total"] == len(tiny) and last["percent"] == 100.0
        assert {"speed", "eta", "file"} <= set(last)
        assert events[-1][1]["model"]["id"] == "tiny-pulled"

        listed = http.get("/manage/models").json()["models"]
        by_id = {m["id"]: m for m in listed}
        assert by_id["tiny-pulled"]["size"] == len(tiny) and by_id["tiny-pulled"]["in_store"]
        assert by_id["tiny-pulled"]["verification"]["status"] == "verified on arrival"
        assert by_id["tiny"]["in_store"] is False  # the server's own model, listed beside

        removed = http.delete("/manage/models/tiny-pulled")
        assert removed.status_code == 200 and removed.json()["removed"] is True
        assert "tiny-pulled" not in {m["id"] for m in http.get("/manage/models").json()["models"]}
        again = http.delete("/manage/models/tiny-pulled")
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "model_not_found"  # OpenAI's error shape


def test_closing_the_stream_cancels_the_pull(
    srv: LiveServer, files: FileServer, tiny: bytes, tmp_path: Path
) -> None:
    url = files.add("/slow.gguf", tiny, pause_after=len(tiny) // 2)
    with srv.http() as http:
        with http.stream("POST", "/manage/pull", json={"model": url, "id": "slow"}) as response:
            events = sse_events(response)
            event, started = next(events)
            assert event == "started"
            (job,) = srv.app.state.manage_jobs.all()
            assert job.id == started["job"]
            assert files.wait_paused(1)
        # The stream is closed: the job is cancelled, and its worker ends at its next
        # progress callback, once the file server sends more bytes.
        assert job.cancelled.wait(10)
        files.release()
        assert job.finished.wait(30)
        assert http.get("/manage/jobs").json()["jobs"] == []
        assert "slow" not in {m.id for m in ModelStore(tmp_path).list_local()}
        # Its lock is released: pulling again works.
        files.configure("/slow.gguf", pause_after=None)
        again = run_job(http, "/manage/pull", {"model": url, "id": "slow"})
        assert again[-1][0] == "done"


def test_delete_on_a_job_cancels_it_with_an_error_event(
    srv: LiveServer, files: FileServer, tiny: bytes
) -> None:
    url = files.add("/held.gguf", tiny, pause_after=len(tiny) // 3)
    with srv.http() as http:
        with http.stream("POST", "/manage/pull", json={"model": url, "id": "held"}) as response:
            events = sse_events(response)
            event, started = next(events)
            assert event == "started"
            assert files.wait_paused(1)
            cancelled = http.delete(f"/manage/jobs/{started['job']}")
            assert cancelled.status_code == 200
            files.release()  # the next progress callback sees the cancellation
            rest = list(events)
        assert rest[-1][0] == "error"
        assert "cancelled" in rest[-1][1]["error"]["message"]
        assert http.delete("/manage/jobs/nope").status_code == 404


def test_a_failed_pull_ends_with_an_error_event(srv: LiveServer, files: FileServer) -> None:
    with srv.http() as http:
        events = run_job(http, "/manage/pull", {"model": files.url("/absent.gguf")})
        assert events[-1][0] == "error"
        assert "404" in events[-1][1]["error"]["message"]
        unknown = run_job(http, "/manage/pull", {"model": "no-such-model"})
        assert unknown[-1][1]["error"]["code"] == "model_not_found"
        bad = http.post("/manage/pull", json={"model": "x", "colour": "red"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "colour"


def test_import_then_verify_reports_every_file_ok(srv: LiveServer, tiny_llama_path: Path) -> None:
    with srv.http() as http:
        events = run_job(http, "/manage/import", {"path": str(tiny_llama_path), "id": "imported"})
        assert events[-1][0] == "done" and events[-1][1]["model"]["id"] == "imported"
        assert any(e == "progress" and d["phase"] == "verify" for e, d in events)

        checked = run_job(http, "/manage/models/imported/verify", {})
        assert checked[-1][0] == "done"
        (result,) = checked[-1][1]["results"]
        assert result["ok"] is True and result["problems"] == []
        listed = {m["id"]: m for m in http.get("/manage/models").json()["models"]}
        assert listed["imported"]["verification"]["status"] == "verified"
        assert listed["imported"]["verification"]["checked_at"] > 0

        missing = http.post("/manage/models/absent/verify", json={})
        assert missing.status_code == 404
        bad_path = run_job(http, "/manage/import", {"path": "/nonexistent/file.gguf"})
        assert bad_path[-1][0] == "error"


def test_the_catalog_is_searchable(srv: LiveServer) -> None:
    with srv.http() as http:
        everything = http.get("/manage/catalog").json()["models"]
        coder = http.get("/manage/catalog", params={"q": "qwen coder"}).json()["models"]
    assert len(everything) > len(coder) >= 1
    entry = next(m for m in coder if m["id"] == "qwen2.5-coder-0.5b-instruct")
    assert "chat" in entry["capabilities"] and entry["size"] > 0 and entry["pulled"] is False
    assert all("qwen" in m["id"] or "qwen" in m["name"].lower() for m in coder)


def test_running_shows_slots_and_countdown_and_unload_frees_the_model(srv: LiveServer) -> None:
    client = srv.openai()
    client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    with srv.http() as http:
        (model,) = http.get("/manage/running").json()["models"]
        assert model["id"] == "tiny" and model["status"] == "ready"
        assert model["slots"] == 2 and len(model["slot_detail"]) == 2
        assert model["n_ctx"] == 256 and model["requests_total"] == 1
        assert 0 < model["unload_in"] <= 300
        assert any(s["tokens"] > 0 for s in model["slot_detail"])

        with http.stream("GET", "/manage/running/events", params={"interval": 0.2}) as stream:
            event, snapshot = next(sse_events(stream))
        assert event == "running" and snapshot["models"][0]["id"] == "tiny"

        assert http.post("/manage/unload", json={"model": "tiny"}).json()["unloaded"] is True
        assert http.get("/manage/running").json()["models"] == []
        again = http.post("/manage/unload", json={"model": "tiny"})
        assert again.status_code == 404 and "not loaded" in again.json()["error"]["message"]


def test_server_info_has_version_build_settings_and_links(srv: LiveServer) -> None:
    with srv.http() as http:
        info = http.get("/manage/server").json()
    from kronk import __version__

    assert info["version"] == __version__
    assert info["base_url"] == srv.base_url
    assert "cpu" in info["llama_cpp"]["backends"]
    assert info["settings"]["port"] == int(srv.base_url.rsplit(":", 1)[1])
    assert info["links"]["metrics"] == "/metrics"
    assert info["auth"]["enabled"] is False


def test_secrets_in_settings_are_never_echoed() -> None:
    shown = redact({"api_token": "s3cret", "port": 1, "security": {"admin_key": "k", "x": 2}})
    assert shown == {"api_token": "(set)", "port": 1, "security": {"admin_key": "(set)", "x": 2}}


def test_running_shows_what_each_slot_is_doing(tiny_llama_path: Path, tmp_path: Path) -> None:
    defaults = {"n_ctx": 4096, "n_seq_max": 2}
    with (
        live_server({"tiny": tiny_llama_path}, load_defaults=defaults, home=tmp_path) as srv,
        srv.http() as http,
    ):
        body = {"model": "tiny", "prompt": "once upon a time", "max_tokens": 4000,
                "ignore_eos": True, "stream": True, "temperature": 0}  # fmt: skip
        seen: list[dict[str, Any]] = []
        with http.stream("POST", "/v1/completions", json=body) as stream:
            assert stream.status_code == 200
            deadline = time.monotonic() + 60
            for _ in stream.iter_lines():  # the request runs while its stream is read
                (model,) = http.get("/manage/running").json()["models"]
                busy = [s for s in model["slot_detail"] if s["state"] == "generating"]
                if busy and busy[0]["generated"] > 0:
                    seen = model["slot_detail"]
                    break
                assert time.monotonic() < deadline, model["slot_detail"]
        assert seen, "no slot was seen generating"
        states = sorted(s["state"] for s in seen)
        assert states == ["generating", "idle"], seen
        (gen,) = [s for s in seen if s["state"] == "generating"]
        assert gen["total"] == gen["done"] > 0 and gen["tokens"] >= gen["total"]
        assert 0 < gen["generated"] < 4000
        # Closed: the slot is free again but keeps its tokens for the next prompt.
        deadline = time.monotonic() + 30
        while True:
            slots = http.get("/manage/running").json()["models"][0]["slot_detail"]
            if any(s["state"] == "cached" for s in slots):
                break
            assert time.monotonic() < deadline, slots
        (kept,) = [s for s in slots if s["state"] == "cached"]
        assert kept["tokens"] > gen["total"] and kept["generated"] == 0
