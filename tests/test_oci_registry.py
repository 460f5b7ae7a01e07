"""Push and pull through a real OCI registry (Debian's docker-registry on loopback).

kronk's own push is read back with plain HTTP and checked against Ollama's format as
written out here, independently of kronk's constants; Ollama- and Docker-Model-Runner-
layout repositories are built by hand (monolithic uploads, no kronk code) and pulled.
Kill-and-resume tests stop a real `kronk` process at a known point with a proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kronk.errors import InvalidRequestError, ModelIntegrityError
from kronk.models.oci import PushResult, parse_reference, pull_model, push_model
from kronk.models.store import ModelStore
from support.registry import HoldingProxy, Registry, push_blob, running_registry, wait_until
from test_cli import json_of
from test_cli import kronk as run_kronk

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OLLAMA = "application/vnd.ollama.image"
KILL_WAIT_S = 30.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def proxy(registry: Registry) -> Iterator[HoldingProxy]:
    holding = HoldingProxy(registry.host)
    yield holding
    holding.close()


@pytest.fixture
def store(tmp_path: Path, tiny_llama_path: Path) -> ModelStore:
    """A home holding the tiny llama as `tiny`; retries fast, so failures show quickly."""
    models = ModelStore(tmp_path / "home", retry_backoff=0.01)
    models.import_path(tiny_llama_path, model_id="tiny")
    return models


def kronk(*args: object, home: Path) -> Any:
    return run_kronk(*args, home=home, env={"DOCKER_CONFIG": str(home / "no-docker")})


def error_line(result: Any) -> str:
    """The one error line a failed command ends with (a progress bar may stand above it)."""
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output
    assert not any(line.startswith("error: ") for line in lines[:-1]), result.stderr
    return str(lines[-1])


def manifest_of(registry: Registry, repository: str, tag: str) -> tuple[httpx.Response, dict]:
    response = httpx.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": DOCKER_V2}
    )
    assert response.status_code == 200, response.text
    return response, response.json()


def put_manifest(registry: Registry, repository: str, tag: str, manifest: dict) -> None:
    data = json.dumps(manifest).encode()
    response = httpx.put(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        content=data,
        headers={"Content-Type": manifest["mediaType"]},
    )
    assert response.status_code == 201, response.text


def descriptor(media_type: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{sha(data)}", "size": len(data), **extra}


def test_push_writes_ollama_layout_and_pull_round_trips(
    registry: Registry, tmp_path: Path, tiny_llama_path: Path
) -> None:
    home = tmp_path / "pusher"
    assert kronk("model", "import", tiny_llama_path, "--id", "tiny", home=home).exit_code == 0
    target = f"{registry.host}/library/tiny:v1"
    pushed = kronk("model", "push", "tiny", target, "--insecure", home=home)
    assert pushed.exit_code == 0, pushed.output
    assert f"kronk model pull oci://{target} --insecure" in pushed.stdout

    model = tiny_llama_path.read_bytes()
    response, manifest = manifest_of(registry, "library/tiny", "v1")
    # Ollama's format, spelled out here rather than taken from kronk's constants.
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == DOCKER_V2
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert manifest["layers"] == [descriptor(f"{OLLAMA}.model", model)]
    assert response.headers["Docker-Content-Digest"] == f"sha256:{sha(response.content)}"
    config_blob = httpx.get(f"{registry.url}/v2/library/tiny/blobs/{manifest['config']['digest']}")
    assert f"sha256:{sha(config_blob.content)}" == manifest["config"]["digest"]
    config = config_blob.json()
    assert config["model_format"] == "gguf" and config["model_family"] == "llama"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{sha(model)}"]}
    assert config["kronk"]["sha256"] == sha(model) and config["kronk"]["size"] == len(model)
    assert "chat" in config["kronk"]["capabilities"]
    assert config["kronk"]["chat_template"] == {"source": "gguf"}

    # Pull into another home: the id comes from repository and tag, the bytes are the same.
    other = tmp_path / "puller"
    pulled = kronk("model", "pull", f"oci://{target}", "--insecure", home=other)
    assert pulled.exit_code == 0, pulled.output
    (entry,) = json_of(kronk("model", "list", "--json", home=other))
    assert entry["id"] == "tiny-v1" and Path(entry["path"]).read_bytes() == model
    assert (
        entry["source"]
        == f"oci://{registry.host}/library/tiny@{response.headers['Docker-Content-Digest']}"
    )

    # A second push sends nothing: the registry has every blob (HEAD).
    again = kronk("model", "push", "tiny", target, "--insecure", home=home)
    assert again.exit_code == 0 and "2 blob(s) already there" in again.stdout


def test_catalog_defaults_travel_as_an_ollama_params_layer(
    registry: Registry, store: ModelStore
) -> None:
    entry = next(e for e in store.catalog.list() if e.defaults.sampling)
    index_entry = store.index.get("tiny")
    assert index_entry is not None
    store.index.add(index_entry.model_copy(update={"catalog_id": entry.id}))
    push_model(store, "tiny", f"{registry.host}/kronk/with-params:1", insecure=True)
    _, manifest = manifest_of(registry, "kronk/with-params", "1")
    kinds = [layer["mediaType"] for layer in manifest["layers"]]
    assert kinds == [f"{OLLAMA}.model", f"{OLLAMA}.params"]
    params = httpx.get(
        f"{registry.url}/v2/kronk/with-params/blobs/{manifest['layers'][1]['digest']}"
    ).json()
    for key, value in entry.defaults.sampling.items():
        ollama_key = {"max_tokens": "num_predict"}.get(key, key)
        if ollama_key in params:
            assert params[ollama_key] == value
    assert "temperature" in params or "top_p" in params or "repeat_penalty" in params


def test_pull_an_ollama_layout_built_by_hand(
    registry: Registry, tmp_path: Path, tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama_path.read_bytes()
    template = b"{{ .System }}{{ .Prompt }}"
    params = json.dumps({"temperature": 0.2, "stop": ["<|im_end|>"]}).encode()
    license_text = b"Apache-2.0"
    repository = "library/hand-made"
    with registry.client() as client:
        for data in (model, template, params, license_text):
            push_blob(client, repository, data)
        layers = [
            descriptor(f"{OLLAMA}.model", model),
            descriptor(f"{OLLAMA}.template", template),
            descriptor(f"{OLLAMA}.params", params),
            descriptor(f"{OLLAMA}.license", license_text),
        ]
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "model_families": ["llama"],
                "model_type": "1M",
                "file_type": "F16",
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
            }
        ).encode()
        push_blob(client, repository, config)
    put_manifest(
        registry,
        repository,
        "0.5b",
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_V2,
            "config": descriptor(DOCKER_CONFIG, config),
            "layers": layers,
        },
    )
    # Through the store, as the SDK and server pull: plain HTTP allowed by the environment.
    monkeypatch.setenv("KRONK_INSECURE_REGISTRIES", registry.host)
    models = ModelStore(tmp_path / "home")
    local = models.pull(f"oci://{registry.host}/{repository}:0.5b")
    assert local.id == "hand-made-0.5b" and local.path.name == "hand-made.gguf"
    assert local.path.read_bytes() == model and local.files[0].sha256 == sha(model)
    assert [m.id for m in models.list_local()] == ["hand-made-0.5b"]
    # Pulling again finds it present and downloads nothing.
    assert models.pull(f"oci://{registry.host}/{repository}:0.5b").added_at == local.added_at


def test_pull_a_docker_model_runner_artifact(
    registry: Registry, tmp_path: Path, tiny_llama_path: Path
) -> None:
    model = tiny_llama_path.read_bytes()
    config = json.dumps(
        {
            "config": {"format": "gguf", "quantization": "F16", "architecture": "llama"},
            "descriptor": {"created": "2025-01-01T00:00:00Z"},
            "rootfs": {"type": "rootfs", "diff_ids": [f"sha256:{sha(model)}"]},
        }
    ).encode()
    repository = "ai/tiny"
    with registry.client() as client:
        push_blob(client, repository, model)
        push_blob(client, repository, config)
    put_manifest(
        registry,
        repository,
        "latest",
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.docker.ai.model.config.v0.1+json", config),
            "layers": [
                descriptor(
                    "application/vnd.docker.ai.gguf.v3",
                    model,
                    annotations={"org.opencontainers.image.title": "tiny-f16.gguf"},
                )
            ],
        },
    )
    home = tmp_path / "home"
    pulled = kronk("model", "pull", f"oci://{registry.host}/{repository}", "--insecure", home=home)
    assert pulled.exit_code == 0, pulled.output
    (entry,) = json_of(kronk("model", "list", "--json", home=home))
    assert entry["id"] == "tiny" and Path(entry["path"]).name == "tiny-f16.gguf"
    assert Path(entry["path"]).read_bytes() == model


def test_a_corrupted_blob_is_refused_and_nothing_is_kept(
    registry: Registry, store: ModelStore, tmp_path: Path, tiny_llama_path: Path
) -> None:
    push_model(store, "tiny", f"{registry.host}/corrupt/tiny:1", insecure=True)
    blob = registry.blob_data_path(f"sha256:{sha(tiny_llama_path.read_bytes())}")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    blob.write_bytes(bytes(data))
    try:
        home = tmp_path / "victim"
        result = kronk(
            "model", "pull", f"oci://{registry.host}/corrupt/tiny:1", "--insecure", home=home
        )
        assert result.exit_code == 1
        assert "does not match" in error_line(result)
        leftovers = [
            p for p in (home / "models").rglob("*") if p.is_file() and p.name != ".index.lock"
        ]
        assert all(p.name == ".index.yaml" for p in leftovers), leftovers
        assert json_of(kronk("model", "list", "--json", home=home)) == []
    finally:
        data[len(data) // 2] ^= 0xFF  # the registry's storage is shared by this module
        blob.write_bytes(bytes(data))


def test_push_refuses_a_local_file_that_changed(registry: Registry, store: ModelStore) -> None:
    local = store.get("tiny")
    local.path.unlink()  # a hard link to the fixture: break it before changing the bytes
    local.path.write_bytes(b"GGUF" + b"\0" * (local.size - 4))  # same size, other bytes
    with pytest.raises(ModelIntegrityError, match="changed since it was indexed"):
        push_model(store, "tiny", f"{registry.host}/changed/tiny:1", insecure=True)
    response = httpx.get(f"{registry.url}/v2/changed/tiny/tags/list")
    assert response.status_code == 404  # nothing reached the registry


def test_bad_references_and_missing_manifests_get_clear_errors(
    registry: Registry, store: ModelStore, tmp_path: Path
) -> None:
    for bad, words in [
        ("library/tiny:1", "registry host"),
        ("localhost:5000/Upper/case", "invalid repository component"),
        ("localhost:5000/x:bad tag", "invalid tag"),
        ("localhost:5000/x@sha256:abc", "64 lower-case hex"),
    ]:
        with pytest.raises(InvalidRequestError, match=words):
            parse_reference(bad)
    ref = parse_reference("oci://localhost:5000/library/qwen")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost:5000", "library/qwen", "latest")
    missing = kronk(
        "model", "pull", f"oci://{registry.host}/library/nothing:1", "--insecure", home=tmp_path
    )
    assert missing.exit_code == 1 and "has no manifest '1'" in error_line(missing)
    # Plain HTTP is never used unless asked for: the TLS handshake fails with a hint.
    https = kronk("model", "pull", f"oci://{registry.host}/library/tiny:v1", home=tmp_path)
    assert https.exit_code == 1 and "--insecure" in error_line(https)


def _kronk_process(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KRONK_HOME": str(home), "DOCKER_CONFIG": str(home / "no-docker")}
    return subprocess.Popen(
        [sys.executable, "-m", "kronk.cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=KILL_WAIT_S) == -signal.SIGKILL


def test_a_push_killed_midway_resumes_from_the_registrys_offset(
    registry: Registry, proxy: HoldingProxy, store: ModelStore
) -> None:
    size = store.get("tiny").size
    chunk = 64 * 1024
    target = f"{proxy.host}/resume/push:1"
    proxy.released.clear()
    proxy.hold_request = ("PATCH", 2)  # the second chunk never reaches the registry
    process = _kronk_process(
        store.home.root, "model", "push", "tiny", target, "--insecure", "--chunk-size", str(chunk)
    )
    try:
        wait_until(proxy.held.is_set, KILL_WAIT_S, "the second upload chunk")
        _kill(process)
    finally:
        if process.poll() is None:
            process.kill()
    states = list((store.home.run_dir / "oci-uploads").glob("*.json"))
    assert len(states) == 1  # the upload's location, saved after the first chunk
    assert httpx.get(f"{registry.url}/v2/resume/push/manifests/1").status_code == 404
    proxy.reset()

    result = push_model(store, "tiny", target, insecure=True, chunk_size=chunk)
    assert isinstance(result, PushResult)
    _, manifest = manifest_of(registry, "resume/push", "1")
    # Only what the registry did not have: the model past its first chunk, and the config.
    assert result.uploaded_bytes == size - chunk + manifest["config"]["size"]
    assert not states[0].exists()
    local = pull_model(store, f"{registry.host}/resume/push:1", insecure=True, model_id="back")
    assert local.files[0].sha256 == store.get("tiny").files[0].sha256


def test_a_pull_killed_midway_resumes_with_a_range_request(
    registry: Registry, proxy: HoldingProxy, store: ModelStore, tmp_path: Path
) -> None:
    push_model(store, "tiny", f"{registry.host}/resume/pull:1", insecure=True)
    size = store.get("tiny").size
    held_at = 60_000
    home = tmp_path / "puller"
    partial = home / "models/pull-1/tiny-llama.gguf.partial"  # the pushed file name
    proxy.released.clear()
    proxy.hold_body_after = held_at
    process = _kronk_process(
        home, "model", "pull", f"oci://{proxy.host}/resume/pull:1", "--insecure"
    )
    try:
        wait_until(proxy.held.is_set, KILL_WAIT_S, "the model blob to stall")
        wait_until(
            lambda: partial.is_file() and partial.stat().st_size == held_at,
            KILL_WAIT_S,
            "the partial file",
        )
        _kill(process)
    finally:
        if process.poll() is None:
            process.kill()
    models = ModelStore(home)
    assert models.list_local() == [] and partial.stat().st_size == held_at
    proxy.reset()

    local = pull_model(models, f"oci://{proxy.host}/resume/pull:1", insecure=True)
    blob_gets = [e for e in proxy.log if e["method"] == "GET" and "/blobs/sha256:" in e["path"]]
    model_get = next(e for e in blob_gets if e["range"] is not None)
    assert model_get["range"] == f"bytes={held_at}-" and model_get["down"] == size - held_at
    assert local.path.read_bytes() == store.get("tiny").path.read_bytes()
    assert not partial.exists()


def test_a_failed_chunk_is_resent_in_the_same_push(
    registry: Registry, proxy: HoldingProxy, store: ModelStore
) -> None:
    proxy.fail_request = ("PATCH", 2, 503)
    chunk = 64 * 1024
    size = store.get("tiny").size
    result = push_model(
        store, "tiny", f"{proxy.host}/retry/push:1", insecure=True, chunk_size=chunk
    )
    _, manifest = manifest_of(registry, "retry/push", "1")
    # Each byte accepted once: the model and the config; the refused chunk went again.
    assert result.uploaded_bytes == size + manifest["config"]["size"]
    patches = [e for e in proxy.log if e["method"] == "PATCH"]
    assert len(patches) == -(-size // chunk) + 1 + 1  # model chunks, the resent one, config
    assert patches[1]["path"].split("?")[0] == patches[2]["path"].split("?")[0]
