"""A small client for the OCI distribution API, on httpx: what push and pull need.

Why not an OCI library: kronk needs Docker schema-2 manifests with Ollama's media types,
chunked uploads that survive the process (the upload's location is kept on disk and
resumed from the offset the registry reports), and blob downloads through kronk's own
`Downloader` (digest checked while streaming, Range resume, one Cancellation). oras-py
writes OCI manifests only and restarts interrupted transfers; wrapping it would have
cost more than these few requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urljoin

import httpx

from kronk.errors import ModelIntegrityError
from kronk.models.download import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Cancellation,
    DownloadCancelledError,
    ProgressMeter,
)
from kronk.models.files import atomic_write_bytes
from kronk.models.oci.auth import Credentials, RegistryAuth
from kronk.models.oci.errors import RegistryAuthError, RegistryError
from kronk.models.oci.layout import ACCEPT, MAX_METADATA_BYTES, Blob, digest_of
from kronk.models.oci.reference import Reference

log = logging.getLogger("kronk.models.oci")

DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
# Bytes handed to httpx at a time inside a chunk: the granularity of progress and cancel.
_PIECE = 256 * 1024


@dataclass
class _Upload:
    location: str
    offset: int


class RegistryClient:
    """One repository of one registry. Use as a context manager or `close()`."""

    def __init__(
        self,
        ref: Reference,
        *,
        credentials: Credentials | None,
        insecure: bool = False,
        push: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = 1.0,
    ) -> None:
        from kronk import __version__

        self.ref = ref
        self.insecure = insecure
        self.base = ref.api_base(insecure=insecure)
        self.retries = retries
        self.retry_backoff = retry_backoff
        actions = "pull,push" if push else "pull"
        self.auth = RegistryAuth(credentials, f"repository:{ref.repository}:{actions}")
        self.http = httpx.Client(
            auth=self.auth,
            timeout=httpx.Timeout(timeout),
            # Blob GETs may redirect to storage; httpx drops Authorization when they leave
            # the registry's origin.
            follow_redirects=True,
            headers={"User-Agent": f"kronk/{__version__}"},
        )

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.ref.repository}/{path}"

    # -- requests -------------------------------------------------------------------------

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request; connection failures and auth refusals become `RegistryError`."""
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, url) from None
        if response.status_code == 401:
            raise self._auth_error(response, url)
        return response

    def check(self) -> None:
        """`GET /v2/`: the registry answers and accepts our credentials (login uses it)."""
        url = f"{self.base}/v2/"
        response = self.request("GET", url)
        if response.status_code != 200:
            raise self._error(response, url, "the registry's API check")

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest; the digest is checked."""
        url = self.url(f"manifests/{reference}")
        response = self.request("GET", url, headers={"Accept": ACCEPT})
        if response.status_code == 404:
            raise RegistryError(
                f"{self.ref.registry}/{self.ref.repository} has no manifest {reference!r}",
                url,
                404,
            )
        if response.status_code != 200:
            raise self._error(response, url, f"fetching manifest {reference}")
        data = response.content
        if len(data) > MAX_METADATA_BYTES:
            raise RegistryError(f"{url}: the manifest is implausibly large", url)
        digest = digest_of(data)
        claimed = response.headers.get("Docker-Content-Digest")
        expected = reference if reference.startswith("sha256:") else claimed
        if expected is not None and expected.startswith("sha256:") and expected != digest:
            raise ModelIntegrityError(
                f"the manifest from {url} does not match: expected {expected}, got {digest}"
            )
        return data, response.headers.get("Content-Type", ""), digest

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> str:
        url = self.url(f"manifests/{tag}")
        response = self.request("PUT", url, content=data, headers={"Content-Type": media_type})
        if response.status_code not in (200, 201):
            raise self._error(response, url, "storing the manifest")
        return response.headers.get("Docker-Content-Digest") or digest_of(data)

    def has_blob(self, blob: Blob) -> bool:
        url = self.blob_url(blob)
        response = self.request("HEAD", url)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._error(response, url, f"checking blob {blob.digest}")

    def get_small_blob(self, blob: Blob) -> bytes:
        """A config or params blob, read into memory and checked against its digest."""
        if blob.size > MAX_METADATA_BYTES:
            raise RegistryError(
                f"blob {blob.digest} is too large for metadata", self.blob_url(blob)
            )
        url = self.blob_url(blob)
        response = self.request("GET", url)
        if response.status_code != 200:
            raise self._error(response, url, f"fetching blob {blob.digest}")
        data = response.content
        if digest_of(data) != blob.digest:
            raise ModelIntegrityError(
                f"blob {blob.digest} from {url} does not match: got {digest_of(data)}"
            )
        return data

    def blob_url(self, blob: Blob) -> str:
        return self.url(f"blobs/{blob.digest}")

    # -- uploads -------------------------------------------------------------------------

    def upload(
        self,
        blob: Blob,
        source: Path | bytes,
        *,
        state_file: Path | None,
        meter: ProgressMeter,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cancel: Cancellation | None = None,
    ) -> int:
        """Upload `source` as `blob` in chunks; return the bytes sent in this call.

        The upload's location is written to `state_file` after every chunk, so a later
        call (after a crash or Ctrl-C) asks the registry how much it has and goes on from
        there. A lost connection is resumed the same way, `retries` times.
        """
        cancel = cancel or Cancellation()
        upload = self._resume(state_file, blob) or self._start()
        sent: list[int] = []  # bytes the registry accepted, across retries
        attempt = 0
        with _open(source) as data:
            while True:
                try:
                    self._send_chunks(
                        blob, data, upload, state_file, meter, chunk_size, cancel, sent
                    )
                    break
                except _Retry as retry:
                    attempt += 1
                    if attempt > self.retries:
                        raise retry.error from None
                    if cancel.wait(self.retry_backoff * 2 ** (attempt - 1)):
                        raise _cancelled(blob) from None
                    status = self._status(upload.location)
                    upload = status or self._start()
        url = httpx.URL(upload.location).copy_merge_params({"digest": blob.digest})
        response = self.request("PUT", str(url), headers={"Content-Length": "0"})
        if state_file is not None:
            state_file.unlink(missing_ok=True)
        if response.status_code != 201:
            raise self._error(response, str(url), f"completing the upload of {blob.digest}")
        return sum(sent)

    def _send_chunks(
        self,
        blob: Blob,
        data: IO[bytes],
        upload: _Upload,
        state_file: Path | None,
        meter: ProgressMeter,
        chunk_size: int,
        cancel: Cancellation,
        sent: list[int],
    ) -> None:
        meter.update(upload.offset, force=True)
        while upload.offset < blob.size:
            data.seek(upload.offset)
            chunk = data.read(min(chunk_size, blob.size - upload.offset))
            end = upload.offset + len(chunk) - 1
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(chunk)),
                "Content-Range": f"{upload.offset}-{end}",
            }
            body = _ChunkBody(chunk, upload.offset, meter, cancel, blob)
            try:
                response = self.http.request(
                    "PATCH", upload.location, content=body, headers=headers
                )
            except httpx.TransportError as exc:
                if cancel.is_set():
                    raise _cancelled(blob) from None
                raise _Retry(self._transport_error(exc, upload.location)) from None
            if response.status_code == 416:  # our offset is not the registry's: ask it
                raise _Retry(self._error(response, upload.location, "an upload chunk"))
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise _Retry(self._error(response, upload.location, "an upload chunk"))
            if response.status_code == 401:
                raise self._auth_error(response, upload.location)
            if response.status_code != 202:
                raise self._error(response, upload.location, "an upload chunk")
            upload.location = self._location(response)
            upload.offset = end + 1
            sent.append(len(chunk))
            if state_file is not None:
                # Written after the registry accepted the chunk: the state never claims
                # bytes the registry has not got.
                state = {"location": upload.location, "digest": blob.digest, "base": self.base}
                atomic_write_bytes(state_file, json.dumps(state).encode())

    def _start(self) -> _Upload:
        url = self.url("blobs/uploads/")
        response = self.request("POST", url, headers={"Content-Length": "0"})
        if response.status_code != 202:
            raise self._error(response, url, "starting an upload")
        return _Upload(self._location(response), 0)

    def _resume(self, state_file: Path | None, blob: Blob) -> _Upload | None:
        if state_file is None or not state_file.is_file():
            return None
        try:
            state = json.loads(state_file.read_text())
            location = str(state["location"])
            same = state.get("digest") == blob.digest and state.get("base") == self.base
        except (OSError, ValueError, KeyError, TypeError):
            same, location = False, ""
        status = self._status(location) if same else None
        if status is None:
            state_file.unlink(missing_ok=True)
        else:
            log.info("resuming the upload of %s at byte %d", blob.digest, status.offset)
        return status

    def _status(self, location: str) -> _Upload | None:
        """Where an upload stands (`GET` on its location), or None if the registry forgot it."""
        try:
            response = self.http.get(location)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, location) from None
        if response.status_code != 204:
            return None
        # "Range: 0-<last byte>"; the registry writes 0-0 for an empty upload too, and
        # re-sending that one byte is harmless (a mismatch answers 416 and we ask again).
        last = response.headers.get("Range", "0-0").rpartition("-")[2]
        offset = int(last) + 1 if last.isdigit() and int(last) > 0 else 0
        return _Upload(self._location(response, default=location), offset)

    def _location(self, response: httpx.Response, default: str | None = None) -> str:
        location: str | None = response.headers.get("Location") or default
        if not location:
            raise RegistryError(
                f"{response.request.url}: the registry sent no upload Location", str(response.url)
            )
        # Registries may answer with a path: it is relative to the registry, not the request.
        return urljoin(self.base + "/", location)

    # -- errors --------------------------------------------------------------------------

    def _transport_error(self, exc: httpx.TransportError, url: str) -> RegistryError:
        hint = ""
        if not self.insecure and isinstance(exc, httpx.ConnectError):
            hint = " (a plain-HTTP registry? pass --insecure)"
        return RegistryError(
            f"could not talk to {self.ref.registry} ({type(exc).__name__}: {exc}){hint}", url
        )

    def _auth_error(self, response: httpx.Response, url: str) -> RegistryAuthError:
        who = (
            f"refused the credentials from {self.auth.credentials.origin}"
            if self.auth.credentials is not None
            else "needs credentials"
        )
        return RegistryAuthError(
            f"{self.ref.registry} {who} (HTTP 401{_detail(response)}); log in with "
            f"`kronk registry login {self.ref.registry}`",
            url,
            401,
        )

    def _error(self, response: httpx.Response, url: str, what: str) -> RegistryError:
        status = response.status_code
        if status == 403:
            return RegistryAuthError(
                f"{self.ref.registry} denied {what} (HTTP 403{_detail(response)}); check that "
                f"your account may use {self.ref.repository}",
                url,
                403,
            )
        return RegistryError(
            f"{self.ref.registry}: {what} failed with HTTP {status}{_detail(response)}", url, status
        )


class _Retry(Exception):
    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


class _ChunkBody:
    """A chunk's bytes in pieces, counting progress as httpx sends them. A class rather
    than a generator so httpx can send it again when an auth challenge asks for a retry."""

    def __init__(
        self, data: bytes, start: int, meter: ProgressMeter, cancel: Cancellation, blob: Blob
    ) -> None:
        self.data, self.start, self.meter, self.cancel, self.blob = data, start, meter, cancel, blob

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for begin in range(0, len(view), _PIECE):
            if self.cancel.is_set():
                raise _cancelled(self.blob)
            piece = bytes(view[begin : begin + _PIECE])
            yield piece
            self.meter.update(self.start + begin + len(piece), fetched_delta=len(piece))


@contextlib.contextmanager
def _open(source: Path | bytes) -> Iterator[IO[bytes]]:
    import io

    if isinstance(source, bytes):
        yield io.BytesIO(source)
    else:
        with source.open("rb") as data:
            yield data


def _cancelled(blob: Blob) -> DownloadCancelledError:
    return DownloadCancelledError(
        f"upload of {blob.digest} stopped; pushing again resumes it", blob.digest
    )


def _detail(response: httpx.Response) -> str:
    """The registry's own words: `{"errors": [{"code": ..., "message": ...}]}`."""
    try:
        errors = response.json().get("errors")
        first = errors[0]
        return f", {first.get('code')}: {first.get('message')}"
    except Exception:  # not JSON, or not the spec's error shape: no detail to add
        return ""


def upload_state_file(folder: Path, base: str, repository: str, digest: str) -> Path:
    key = hashlib.sha256(f"{base}/{repository}/{digest}".encode()).hexdigest()[:32]
    return folder / f"{key}.json"
