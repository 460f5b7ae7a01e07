"""A web site on loopback for web_fetch, and a search engine speaking SearXNG's JSON
API, with what each request asked logged so tests assert what went over the wire."""

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


@dataclass
class Site:
    port: int
    paths: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    # /slow: `arrived` is set when a request comes, and the answer waits for `release`.
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

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
