"""The built-in tools: web_fetch (a page as readable markdown) and web_search (SearXNG's
JSON API or the Brave Search API)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urljoin

import httpx
from bs4 import BeautifulSoup
from markdownify import MarkdownConverter

from kronk.agent.config import ToolsConfig
from kronk.agent.netguard import AddressRefused, guarded_transport
from kronk.agent.result import ToolError, ToolResult

FETCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"url": {"type": "string", "description": "an http(s) URL"}},
    "required": ["url"],
}
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "what to search for"}},
    "required": ["query"],
}
FETCH_DESCRIPTION = "Fetch a web page (http or https URL) and return its text as markdown."
SEARCH_DESCRIPTION = "Search the web; returns the title, URL and snippet of each result."

_REDIRECTS = {301, 302, 303, 307, 308}
_TEXT_TYPES = {"application/json", "application/xml", "application/xhtml+xml"}
_USER_AGENT = "kronk-web-fetch/1"


def _kind(content_type: str) -> str | None:
    """ "html", "text" or None (refused) for a response's content type."""
    mime = content_type.split(";")[0].strip().lower()
    if mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith("+json"):
        return "text"
    return None


async def web_fetch(config: ToolsConfig, url: str) -> ToolResult:
    """Fetch `url`, following redirects one hop at a time (each hop's address checked
    again by the transport), and turn HTML into markdown."""
    if not isinstance(url, str) or not url:
        raise ToolError("web_fetch needs a url", "invalid_input")
    transport = guarded_transport(config.allowed_networks())
    timeout = httpx.Timeout(config.fetch_timeout)
    async with httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as client:
        for _ in range(config.fetch_max_redirects + 1):
            try:
                scheme = httpx.URL(url).scheme
            except httpx.InvalidURL as exc:
                raise ToolError(f"{url!r} is not a valid URL: {exc}", "invalid_input") from exc
            if scheme not in ("http", "https"):
                raise ToolError(
                    f"web_fetch fetches http and https URLs only, not {scheme!r}", "invalid_input"
                )
            try:
                async with client.stream("GET", url, headers={"user-agent": _USER_AGENT}) as rsp:
                    if rsp.status_code in _REDIRECTS and "location" in rsp.headers:
                        url = urljoin(url, rsp.headers["location"])
                        continue
                    return await _read(config, url, rsp)
            except AddressRefused as exc:
                raise ToolError(str(exc), "not_allowed") from exc
            except httpx.HTTPError as exc:
                failed = f"fetching {url} failed: {exc or type(exc).__name__}"
                raise ToolError(failed, "unreachable") from exc
        raise ToolError(f"more than {config.fetch_max_redirects} redirects", "unreachable")


async def _read(config: ToolsConfig, url: str, rsp: httpx.Response) -> ToolResult:
    if rsp.status_code >= 400:
        raise ToolError(f"{url} answered HTTP {rsp.status_code}", "unreachable")
    content_type = rsp.headers.get("content-type", "")
    kind = _kind(content_type)
    if kind is None:
        raise ToolError(
            f"{url} is {content_type or 'of no stated type'}; web_fetch reads text and HTML only",
            "unsupported_type",
        )
    body = bytearray()
    truncated = False
    async for part in rsp.aiter_bytes():
        body += part
        if len(body) > config.fetch_max_bytes:
            del body[config.fetch_max_bytes :]
            truncated = True
            break
    text = body.decode(rsp.encoding or "utf-8", errors="replace")
    if kind == "html":
        text = html_to_markdown(text)
    if truncated:
        text += f"\n\n[truncated: the page is over {config.fetch_max_bytes} bytes]"
    return ToolResult(text, data={"url": url, "content_type": content_type})


def html_to_markdown(html: str) -> str:
    """Readable markdown of a page: scripts, styles and other non-text elements go first
    (markdownify would keep their text)."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "iframe", "head"]):
        tag.decompose()
    markdown: str = MarkdownConverter(heading_style="ATX").convert_soup(soup)
    return re.sub(r"\n{3,}", "\n\n", markdown).strip()


async def web_search(config: ToolsConfig, query: str) -> ToolResult:
    """Search with the configured backend: results as title, URL and snippet."""
    if not isinstance(query, str) or not query.strip():
        raise ToolError("web_search needs a query", "invalid_input")
    kind, url, key = config.search_settings()
    if kind is None:
        raise ToolError("web_search has no backend: set search_url (SearXNG) or a Brave key")
    # The backend is the operator's own choice (often a local SearXNG): not guarded.
    async with httpx.AsyncClient(timeout=config.fetch_timeout) as client:
        try:
            if kind == "brave":
                results = await _brave(client, url, key, query, config.search_results)
            else:
                assert url is not None
                results = await _searxng(client, url, query, config.search_results)
        except httpx.HTTPError as exc:
            raise ToolError(f"the {kind} search failed: {exc or type(exc).__name__}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ToolError(f"the {kind} search answered something unreadable: {exc}") from exc
    text = json.dumps(results, ensure_ascii=False) if results else "no results"
    return ToolResult(text, data=results)


async def _searxng(
    client: httpx.AsyncClient, url: str, query: str, limit: int
) -> list[dict[str, str]]:
    rsp = await client.get(
        urljoin(url.rstrip("/") + "/", "search"), params={"q": query, "format": "json"}
    )
    body = _json(rsp, "searxng")
    items = body.get("results") if isinstance(body, dict) else None
    return _results(items, "content", limit)


async def _brave(
    client: httpx.AsyncClient, url: str | None, key: str | None, query: str, limit: int
) -> list[dict[str, str]]:
    if not key:
        raise ToolError("the Brave search backend needs a key (search_key or BRAVE_API_KEY)")
    endpoint = url or "https://api.search.brave.com/res/v1/web/search"
    headers = {"X-Subscription-Token": key, "Accept": "application/json"}
    rsp = await client.get(endpoint, params={"q": query, "count": limit}, headers=headers)
    body = _json(rsp, "brave")
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    web = body.get("web") or {}  # no `web` section: no web results
    return _results(web.get("results", []) if isinstance(web, dict) else None, "description", limit)


def _json(rsp: httpx.Response, kind: str) -> Any:
    """The backend's JSON body; a failed status is a ToolError with the backend's reason
    (Brave's `{"error": {"detail": ...}}`), naming a refused key as such."""
    if rsp.status_code < 400:
        return rsp.json()
    detail = ""
    try:
        error = rsp.json().get("error")
        if isinstance(error, dict):
            detail = str(error.get("detail") or error.get("code") or "")
    except (ValueError, AttributeError):
        pass
    what = (
        f"the {kind} search refused the key (HTTP {rsp.status_code})"
        if rsp.status_code in (401, 403)
        else f"the {kind} search answered HTTP {rsp.status_code}"
    )
    raise ToolError(f"{what}: {detail}" if detail else what)


def _results(items: Any, snippet: str, limit: int) -> list[dict[str, str]]:
    """Title, URL and snippet of each result (`snippet` is the backend's field for it)."""
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("url"), str) for i in items
    ):
        raise ValueError("its results are not a list of objects with a url")
    return [
        {"title": str(i.get("title", "")), "url": i["url"], "snippet": str(i.get(snippet, ""))}
        for i in items[:limit]
    ]


__all__ = ["FETCH_SCHEMA", "SEARCH_SCHEMA", "web_fetch", "web_search"]
