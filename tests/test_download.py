"""Resumable, verified HTTP downloads against a real server on loopback."""

from __future__ import annotations

import hashlib
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kronk.errors import DownloadError, ModelIntegrityError
from kronk.models.download import (
    Downloader,
    DownloadProgress,
    RemoteFile,
    download_file,
)
from kronk.models.names import partial_path
from support.file_server import FileServer

DATA = random.Random(7).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def no_retries() -> Downloader:
    return Downloader(retries=0, retry_backoff=0)


def test_download_verifies_and_moves_into_place(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", DATA)
    events: list[DownloadProgress] = []
    dest = tmp_path / "m.gguf"

    result = download_file(url, dest, size=len(DATA), sha256=SHA, progress=events.append)

    assert dest.read_bytes() == DATA
    assert (result.size, result.sha256, result.fetched, result.resumed_from) == (
        len(DATA),
        SHA,
        len(DATA),
        0,
    )
    assert not partial_path(dest).exists()
    done = [e.bytes_done for e in events]
    assert done == sorted(done) and done[-1] == len(DATA)
    assert all(e.file == "m.gguf" and e.bytes_total == len(DATA) for e in events)
    assert all(e.speed >= 0 for e in events) and events[-1].eta == 0.0


def test_a_dropped_connection_keeps_the_partial_file_and_the_next_run_resumes(
    server: FileServer, tmp_path: Path
) -> None:
    half = len(DATA) // 2
    url = server.add("/m.gguf", DATA, drop_after=half)
    dest = tmp_path / "m.gguf"
    spec = RemoteFile(url, dest, len(DATA), SHA)

    with no_retries() as downloader, pytest.raises(DownloadError, match="resume"):
        downloader.download(spec)

    assert not dest.exists()
    assert partial_path(dest).stat().st_size == half
    with no_retries() as downloader:
        result = downloader.download(spec)

    first, second = server.requests_for("/m.gguf")
    assert first.range is None and first.bytes_sent == half
    assert second.range == f"bytes={half}-" and second.status == 206
    assert second.bytes_sent == len(DATA) - half
    assert (result.resumed_from, result.fetched, result.sha256) == (half, len(DATA) - half, SHA)
    assert dest.read_bytes() == DATA and not partial_path(dest).exists()


def test_retries_resume_within_one_call(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", DATA, drop_after=100_000, drop_times=2)

    with Downloader(retries=2, retry_backoff=0) as downloader:
        result = downloader.download(RemoteFile(url, tmp_path / "m.gguf", len(DATA), SHA))

    assert [r.range for r in server.requests_for("/m.gguf")] == [
        None,
        "bytes=100000-",
        "bytes=200000-",
    ]
    assert server.bytes_sent() == len(DATA)
    assert result.sha256 == SHA


def test_wrong_bytes_delete_the_download_and_say_expected_and_got(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.add("/m.gguf", DATA, corrupt=True)
    dest = tmp_path / "m.gguf"
    wrong_sha = hashlib.sha256(bytes(x ^ 0xFF for x in DATA)).hexdigest()

    with pytest.raises(ModelIntegrityError) as raised:
        download_file(url, dest, size=len(DATA), sha256=SHA)

    assert f"expected {len(DATA)} bytes with sha256 {SHA}" in str(raised.value)
    assert f"got {len(DATA)} bytes with sha256 {wrong_sha}" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_server_with_a_different_size_is_refused_before_downloading(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.add("/m.gguf", DATA)

    with pytest.raises(ModelIntegrityError, match=f"expected {len(DATA) + 1} bytes"):
        download_file(url, tmp_path / "m.gguf", size=len(DATA) + 1, sha256=SHA)

    assert list(tmp_path.iterdir()) == []


def test_a_server_that_ignores_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", DATA, ignore_range=True)
    dest = tmp_path / "m.gguf"
    partial_path(dest).write_bytes(DATA[:1000])

    result = download_file(url, dest, size=len(DATA), sha256=SHA)

    (request,) = server.requests_for("/m.gguf")
    assert request.range == "bytes=1000-" and request.status == 200
    assert request.bytes_sent == len(DATA)
    assert result.resumed_from == 0 and dest.read_bytes() == DATA


def test_the_kept_prefix_is_hashed_so_a_corrupt_partial_file_is_caught(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.add("/m.gguf", DATA)
    dest = tmp_path / "m.gguf"
    partial_path(dest).write_bytes(b"\x00" * 1000)  # wrong prefix: the rest will be right

    with pytest.raises(ModelIntegrityError, match="does not match"):
        download_file(url, dest, size=len(DATA), sha256=SHA)
    assert list(tmp_path.iterdir()) == []

    download_file(url, dest, size=len(DATA), sha256=SHA)  # starts clean, succeeds
    assert dest.read_bytes() == DATA


def test_a_partial_file_longer_than_the_remote_file_is_restarted(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.add("/m.gguf", DATA)
    dest = tmp_path / "m.gguf"
    partial_path(dest).write_bytes(b"x" * (len(DATA) + 5))

    result = download_file(url, dest)  # size unknown: the server's 416 says start over

    assert [r.status for r in server.requests_for("/m.gguf")] == [416, 200]
    assert result.sha256 == SHA and dest.read_bytes() == DATA


def test_an_existing_verified_file_is_not_downloaded_again(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.add("/m.gguf", DATA)
    dest = tmp_path / "m.gguf"
    dest.write_bytes(DATA)

    result = download_file(url, dest, size=len(DATA), sha256=SHA)

    assert result.fetched == 0 and server.requests == []
    assert list(tmp_path.iterdir()) == [dest]


@pytest.mark.parametrize(
    ("status", "token", "message"),
    [
        (401, None, "HF_TOKEN"),
        (403, "wrong", "refused"),
    ],
)
def test_authentication_failures_explain_the_token(
    server: FileServer, tmp_path: Path, status: int, token: str | None, message: str
) -> None:
    url = server.add("/gated.gguf", DATA, token="secret")

    with pytest.raises(DownloadError, match=message) as raised:
        download_file(url, tmp_path / "gated.gguf", token=token)

    assert raised.value.status == status
    assert list(tmp_path.iterdir()) == []  # an empty partial file is not kept


def test_a_bearer_token_is_sent(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/gated.gguf", DATA, token="secret")

    download_file(url, tmp_path / "gated.gguf", token="secret", sha256=SHA)

    assert server.requests[0].authorization == "Bearer secret"


def test_not_found_is_a_clear_error(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as raised:
        download_file(server.url("/missing.gguf"), tmp_path / "x.gguf")
    assert raised.value.status == 404


def test_server_errors_are_retried(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", DATA, status=503)

    with (
        Downloader(retries=2, retry_backoff=0) as downloader,
        pytest.raises(DownloadError, match="503"),
    ):
        downloader.download(RemoteFile(url, tmp_path / "m.gguf"))

    assert len(server.requests) == 3


def test_an_unreachable_host_fails_fast(tmp_path: Path) -> None:
    with FileServer() as gone:
        url = gone.url("/m.gguf")
    # retry_backoff=60: a retry would make this test time out.
    with (
        Downloader(retries=3, retry_backoff=60) as downloader,
        pytest.raises(DownloadError, match="could not connect"),
    ):
        downloader.download(RemoteFile(url, tmp_path / "m.gguf"))


def test_several_files_download_in_parallel(server: FileServer, tmp_path: Path) -> None:
    # Every response waits at a barrier for all three: only concurrent downloads pass it.
    barrier = threading.Barrier(3)
    files = []
    for i in range(3):
        data = random.Random(i).randbytes(50_000 + i)
        url = server.add(f"/f{i}.gguf", data, barrier=barrier)
        files.append(
            RemoteFile(url, tmp_path / f"f{i}.gguf", len(data), hashlib.sha256(data).hexdigest())
        )
    events: list[DownloadProgress] = []
    lock = threading.Lock()

    def record(event: DownloadProgress) -> None:
        with lock:
            events.append(event)

    with Downloader(max_parallel=3, retries=0) as downloader:
        results = downloader.download_all(files, record)

    assert [r.path for r in results] == [f.dest for f in files]
    for f in files:
        assert hashlib.sha256(f.dest.read_bytes()).hexdigest() == f.sha256
    assert {e.file for e in events} == {"f0.gguf", "f1.gguf", "f2.gguf"}


def test_one_failing_file_fails_the_batch(server: FileServer, tmp_path: Path) -> None:
    good = server.add("/good.gguf", DATA)
    files = [RemoteFile(good, tmp_path / "good.gguf", len(DATA), SHA)]
    files.append(RemoteFile(server.url("/missing.gguf"), tmp_path / "missing.gguf"))

    with (
        Downloader(max_parallel=2, retries=0) as downloader,
        pytest.raises(DownloadError, match="404"),
    ):
        downloader.download_all(files)

    assert not (tmp_path / "missing.gguf").exists()


def test_ctrl_c_stops_parallel_downloads_stalled_on_a_silent_server(
    server: FileServer, tmp_path: Path
) -> None:
    # Each response sends its headers, then goes silent; the read timeout is far away.
    files = [
        RemoteFile(server.add(f"/f{i}.gguf", DATA, pause_after=0), tmp_path / f"f{i}.gguf")
        for i in range(2)
    ]
    main_thread = threading.main_thread().ident or 0

    def ctrl_c_once_both_are_stalled() -> None:
        if server.wait_paused(2):  # Ctrl-C reaches the main thread, as in a terminal
            signal.pthread_kill(main_thread, signal.SIGINT)

    typist = threading.Thread(target=ctrl_c_once_both_are_stalled)
    typist.start()
    with (
        Downloader(max_parallel=2, retries=0, timeout=600) as downloader,
        pytest.raises(KeyboardInterrupt),
    ):
        downloader.download_all(files)
    typist.join()

    # Both workers gave up while the server still held its pause (it sends the rest once
    # released, or after 30 s): they waited neither for the server nor the read timeout.
    assert server.bytes_sent() == 0
    assert not any(f.dest.exists() or partial_path(f.dest).exists() for f in files)


def test_two_downloads_of_one_file_do_not_interleave(server: FileServer, tmp_path: Path) -> None:
    url = server.add("/m.gguf", DATA, pause_after=100_000)
    spec = RemoteFile(url, tmp_path / "m.gguf", len(DATA), SHA)
    outcome: list[object] = []

    def first() -> None:
        with no_retries() as downloader:
            outcome.append(downloader.download(spec))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert server.paused.wait(timeout=30)
        with no_retries() as downloader, pytest.raises(DownloadError, match="another kronk"):
            downloader.download(spec)
    finally:
        server.release()
        thread.join(timeout=30)

    assert (tmp_path / "m.gguf").read_bytes() == DATA
    assert len(outcome) == 1
