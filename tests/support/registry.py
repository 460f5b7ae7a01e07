"""A real OCI registry on loopback: Debian's `docker-registry` (the CNCF distribution
server), started per test module on a free port, plain or behind htpasswd (Basic) or
token (Bearer) auth; plus the token service that Bearer needs and an HTTP proxy that can
hold a transfer midway, so a test can kill a push or pull at a known point.

The binary comes from the `docker-registry` package (`make test` installs it).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT_S = 20.0
SERVICE = "kronk-test-registry"
ISSUER = "kronk-test-issuer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class TokenServer:
    """The registry's token service: Basic credentials in, an RS256 JWT out, granting the
    scopes asked for. Its certificate is the registry's `rootcertbundle`."""

    def __init__(self, folder: Path, users: dict[str, str]) -> None:
        self.users = users
        self.requests: list[dict[str, Any]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = folder / "token-cert.pem"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        token_server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                user = _basic_user(self.headers.get("Authorization"), token_server.users)
                token_server.requests.append(
                    {"user": user, "scope": query.get("scope", []), "service": query.get("service")}
                )
                if user is None:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": token_server.issue(user, query.get("scope", []))})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        return Handler


class Registry:
    """One `docker-registry` process with its own storage folder."""

    def __init__(
        self, folder: Path, *, auth: str | None = None, users: dict[str, str] | None = None
    ) -> None:
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError(f"{REGISTRY_BINARY} is not installed (make test installs it)")
        self.folder = folder
        self.storage = folder / "storage"
        self.users = users or {}
        self.token_server: TokenServer | None = None
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if auth == "htpasswd":
            htpasswd = folder / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "kronk-test", "path": str(htpasswd)}}
        elif auth == "token":
            self.token_server = TokenServer(folder, self.users)
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.token_server.cert_file),
                }
            }
        elif auth is not None:
            raise ValueError(auth)
        config_file = folder / "config.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        self._log = (folder / "registry.log").open("wb")
        self.process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_file)], stdout=self._log, stderr=self._log
        )
        wait_until(self._answers, START_TIMEOUT_S, f"{REGISTRY_BINARY} on {self.host}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            log = (self.folder / "registry.log").read_text(errors="replace")
            raise RuntimeError(f"{REGISTRY_BINARY} exited: {log[-2000:]}")
        try:
            return httpx.get(f"{self.url}/v2/", timeout=1.0).status_code in (200, 401)
        except httpx.TransportError:
            return False

    def blob_data_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to corrupt them on purpose)."""
        hex_digest = digest.removeprefix("sha256:")
        return (
            self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
        )

    def client(self, user: str | None = None) -> httpx.Client:
        """A plain httpx client for building repositories by hand (Basic auth only)."""
        auth = (user, self.users[user]) if user is not None else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=30.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        if self.token_server is not None:
            self.token_server.close()


@contextlib.contextmanager
def running_registry(
    folder: Path, *, auth: str | None = None, users: dict[str, str] | None = None
) -> Iterator[Registry]:
    registry = Registry(folder, auth=auth, users=users)
    try:
        yield registry
    finally:
        registry.stop()


def htpasswd_line(user: str, password: str) -> str:
    """The registry accepts bcrypt entries only."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}\n"


def push_blob(client: httpx.Client, repository: str, data: bytes) -> str:
    """Monolithic upload (POST, then PUT with the bytes): independent of kronk's client."""
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = client.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = httpx.URL(started.headers["Location"]).copy_merge_params({"digest": digest})
    done = client.put(
        location,
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


class HoldingProxy:
    """An HTTP proxy in front of a registry that can stop a transfer at a known point:
    hold the n-th request of a method without forwarding it, hold a blob response after
    some bytes of its body, or answer one request with an error status. Held exchanges
    wait for `release()`, then their connection is closed (what a killed client leaves).

    The client's Host header goes through unchanged, so the registry's upload locations
    point at the proxy, as they would at any front end."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.hold_request: tuple[str, int] | None = None  # (method, n-th)
        self.hold_body_after: int | None = None  # body bytes of a blob GET
        self.fail_request: tuple[str, int, int] | None = None  # (method, n-th, status)
        self.held = threading.Event()
        self.released = threading.Event()
        self.counts: dict[str, int] = {}
        self.log: list[dict[str, Any]] = []  # method, path, range, body bytes up and down
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=f"http://{target}", timeout=30.0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.hold_request = self.fail_request = self.hold_body_after = None
            self.counts.clear()
            self.log.clear()
            self.held.clear()
        self.released.set()

    def close(self) -> None:
        self.reset()
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward()

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                entry = {
                    "method": self.command,
                    "path": self.path,
                    "range": self.headers.get("Range"),
                    "up": len(body),
                    "down": 0,
                }
                with proxy._lock:
                    n = proxy.counts[self.command] = proxy.counts.get(self.command, 0) + 1
                    proxy.log.append(entry)
                    hold, fail = proxy.hold_request, proxy.fail_request
                    hold_after = proxy.hold_body_after
                if hold == (self.command, n):
                    self._hold()
                    return
                if fail is not None and fail[:2] == (self.command, n):
                    self.send_response(fail[2])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP]
                request = proxy._upstream.build_request(
                    self.command, self.path, content=body, headers=headers
                )
                response = proxy._upstream.send(request, stream=True)
                try:
                    self._relay(response, entry, hold_after)
                finally:
                    response.close()

            def _relay(
                self, response: httpx.Response, entry: dict[str, Any], hold_after: int | None
            ) -> None:
                length = response.headers.get("Content-Length")
                data = b"" if length is not None else response.read()
                self.send_response(response.status_code)
                for key, value in response.headers.multi_items():
                    if key.lower() not in _HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", length if length is not None else str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if length is None:  # read whole above
                    self.wfile.write(data)
                    entry["down"] += len(data)
                    return
                blob = "/blobs/sha256:" in self.path
                for chunk in response.iter_raw():
                    if blob and hold_after is not None and entry["down"] + len(chunk) > hold_after:
                        piece = chunk[: hold_after - entry["down"]]
                        self.wfile.write(piece)
                        self.wfile.flush()
                        entry["down"] += len(piece)
                        self._hold()
                        return
                    self.wfile.write(chunk)
                    entry["down"] += len(chunk)

            def _hold(self) -> None:
                proxy.held.set()
                proxy.released.wait(60.0)  # bounded: a failing test ends
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        return Handler


_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _basic_user(header: str | None, users: dict[str, str]) -> str | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user if users.get(user) == password else None
