"""A web site on loopback for web_fetch, and search engines speaking SearXNG's JSON API
(`/search`) and the Brave Search API (`/brave/res/v1/web/search`, key `BRAVE_KEY` in
X-Subscription-Token), with what each request asked logged so tests assert what went
over the wire."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PAGE = """<html><head><title>Kronk fixture</title><style>body{color:red}</style>
<script>var hidden = "SCRIPT-TEXT";</script></head>
<body><h1>Harbour report</h1><p>The tide code today is <b>TIDE-93172-QX</b>.</p>
<ul><li>first</li><li>second</li></ul></body></html>"""
BRAVE_KEY = "brave-fixture-key-7731"
BRAVE_PATH = "/brave/res/v1/web/search"


@dataclass
class Site:
    port: int
    paths: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    # /slow: `arrived` is set when a request comes, and the answer waits for `release`.
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    # /hold: `held` is set when a request comes; the handler then reads the connection
    # until the client closes it, and sets `hold_closed` (proof the fetch was dropped).
    held: threading.Event = field(default_factory=threading.Event)
    hold_closed: threading.Event = field(default_factory=threading.Event)
    # Brave: the X-Subscription-Token and `count` of each search request.
    brave_keys: list[str] = field(default_factory=list)
    brave_counts: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            site.paths.append(url.path)
            if url.path == "/page.html":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif url.path == "/notes.txt":
                self._send(200, b"plain notes: KELP-4471", "text/plain")
            elif url.path == "/big.txt":
                self._send(200, b"y" * 300_000, "text/plain")
            elif url.path == "/blob.bin":
                self._send(200, b"\x00\x01\x02", "application/octet-stream")
            elif url.path == "/as":  # any content type: /as?type=image/png (empty: none)
                ctype = parse_qs(url.query).get("type", [""])[0]
                self.send_response(200)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"\x89PNG")
            elif url.path == "/missing":
                self._send(404, b"no", "text/plain")
            elif url.path == "/hop":
                self._send(302, b"", "text/plain", Location="/page.html")
            elif url.path == "/to-private":
                self._send(302, b"", "text/plain", Location="http://10.0.0.1/secret")
            elif url.path == "/to-metadata":
                self._send(
                    302, b"", "text/plain", Location="http://169.254.169.254/latest/meta-data/"
                )
            elif url.path == "/slow":
                site.arrived.set()
                site.release.wait(30)  # bounded, so a failing test still ends
                self._send(200, b"late", "text/plain")
            elif url.path == "/hold":
                site.held.set()
                self.connection.settimeout(60)  # bounded, so a failing test still ends
                try:
                    closed = self.connection.recv(1) == b""  # EOF: the client went away
                except OSError:
                    closed = False
                if closed:
                    site.hold_closed.set()
                    self.close_connection = True
                    return
                self._send(200, b"held", "text/plain")
            elif url.path.startswith("/brave"):
                self._brave(url.path, parse_qs(url.query))
            elif url.path == "/search":
                query = parse_qs(url.query).get("q", [""])[0]
                site.queries.append(query)
                results = [
                    {
                        "title": f"Result {i} for {query}",
                        "url": site.url(f"/r{i}"),
                        "content": f"SNIPPET-{i}-ORCHID about {query}",
                        "engine": "fixture",
                    }
                    for i in range(1, 4)
                ]
                body = {"query": query, "number_of_results": 3, "results": results}
                self._send(200, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def _brave(self, path: str, params: dict[str, list[str]]) -> None:
            key = self.headers.get("X-Subscription-Token", "")
            site.brave_keys.append(key)
            if path == "/brave-garbled" + BRAVE_PATH[6:]:
                self._send(200, b"<html>upstream proxy error</html>", "application/json")
                return
            if path == "/brave-misshapen" + BRAVE_PATH[6:]:
                body = {"type": "search", "web": {"type": "search", "results": "none"}}
                self._send(200, json.dumps(body).encode(), "application/json")
                return
            if path != BRAVE_PATH:
                self._send(404, b"not found", "text/plain")
                return
            if key != BRAVE_KEY:  # Brave's own error shape
                error = {
                    "type": "ErrorResponse",
                    "error": {
                        "id": "c0ffee00-0000-4000-8000-000000000000",
                        "status": 401,
                        "code": "SUBSCRIPTION_TOKEN_INVALID",
                        "detail": "The provided subscription token is invalid.",
                        "meta": {"component": "authentication"},
                    },
                    "time": 1700000000,
                }
                self._send(401, json.dumps(error).encode(), "application/json")
                return
            query = params.get("q", [""])[0]
            site.queries.append(query)
            site.brave_counts.append(params.get("count", [""])[0])
            results = [
                {
                    "type": "search_result",
                    "title": f"Brave {i} for {query}",
                    "url": site.url(f"/b{i}"),
                    "description": f"BRAVE-{i}-LICHEN on {query}",
                    "is_source_local": False,
                    "family_friendly": True,
                }
                for i in range(1, 4)
            ]
            body = {
                "type": "search",
                "query": {"original": query, "show_strict_warning": False},
                "mixed": {"type": "mixed", "main": [{"type": "web", "index": 0, "all": True}]},
                "web": {"type": "search", "results": results, "family_friendly": True},
            }
            self._send(200, json.dumps(body).encode(), "application/json")

    return Handler


@contextmanager
def web_site() -> Iterator[Site]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(Site(0)))
    site = Site(httpd.server_address[1])
    httpd.RequestHandlerClass = _handler(site)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
