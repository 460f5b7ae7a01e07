"""Model management in Ollama's API: /api/tags, /api/show, /api/ps, /api/version,
/api/pull, /api/delete and /api/copy.

Models are described from their GGUF headers (`gguf_info`), so listing or showing a
model never loads it. Pulls go through kronk's model store (catalog ids, http(s) URLs,
oci:// references) in a worker thread, its progress streamed as Ollama's status lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from kronk import __version__
from kronk.chat.template import template_supports_tools
from kronk.errors import (
    InvalidRequestError,
    KronkError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)
from kronk.llama import supports_gpu_offload
from kronk.models.aliases import AliasResolver, is_glob
from kronk.models.download import DownloadProgress
from kronk.models.gguf_info import GGUFSummary, gguf_summary, parameter_size
from kronk.models.resolver import ModelResolver, ResolvedModel
from kronk.models.store import ModelStore
from kronk.pool import LoadedModel, ModelPool
from kronk.server.common import server_state
from kronk.server.ollama.errors import error_message
from kronk.server.ollama.protocol import (
    CopyRequest,
    DeleteRequest,
    PullRequest,
    ShowRequest,
    candidate_ids,
    resolve_name,
)
from kronk.server.ollama.routes import NDJSON, router
from kronk.server.ollama.stream import ndjson
from kronk.server.security import may_see_paths
from kronk.server.sse import EventStreamResponse

# The Ollama API version kronk answers like (clients check it before using newer fields
# such as `think`, tool calls and structured output).
OLLAMA_VERSION = "0.12.0"
# kronk's capability names -> Ollama's.
_CAPABILITIES = {
    "chat": "completion",
    "completion": "completion",
    "tools": "tools",
    "fim": "insert",
    "reasoning": "thinking",
    "embedding": "embedding",
    "images": "vision",
}
PROGRESS_INTERVAL_S = 0.25  # at most this often a progress line per file


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _summary(path: Path) -> GGUFSummary | None:
    try:
        return gguf_summary(path)
    except (OSError, ValueError, KeyError, IndexError):  # unreadable: described without it
        return None


def _store(resolver: object) -> ModelStore | None:
    """The model store behind the server's resolver (under its alias map and its chain
    of resolvers), if it has one."""
    if isinstance(resolver, ModelStore):
        return resolver
    inner = [getattr(resolver, "base", None), *getattr(resolver, "resolvers", ())]
    return next((s for r in inner if r is not None and (s := _store(r)) is not None), None)


def _aliases(resolver: ModelResolver) -> AliasResolver | None:
    return resolver if isinstance(resolver, AliasResolver) else None


def _digest(model: ResolvedModel, store: ModelStore | None) -> str:
    """The sha256 the store verified; for a file outside it, an id of the file's version
    (Ollama's digests identify a model; hashing gigabytes per listing would not pay)."""
    if store is not None:
        try:
            return store.get(model.id).files[0].sha256
        except (KronkError, IndexError):
            pass
    stat = model.path.stat()
    return hashlib.sha256(f"{model.path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


def _details(summary: GGUFSummary | None) -> dict[str, Any]:
    if summary is None:
        return {"parent_model": "", "format": "gguf", "family": "", "families": None}
    return {
        "parent_model": "",
        "format": "gguf",
        "family": summary.architecture,
        "families": [summary.architecture],
        "parameter_size": parameter_size(summary.n_params),
        "quantization_level": summary.quantization or "",
    }


def _describe(
    model: ResolvedModel, store: ModelStore | None, name: str | None = None
) -> dict[str, Any]:
    """name, model, modified_at, size, digest and details of one model (worker thread)."""
    stat = model.path.stat()
    return {
        "name": name or model.id,
        "model": name or model.id,
        "modified_at": _iso(model.created or stat.st_mtime),
        "size": stat.st_size,
        "digest": _digest(model, store),
        "details": _details(_summary(model.path)),
    }


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    pool = server_state(request).pool

    def listing() -> list[dict[str, Any]]:
        store = _store(pool.resolver)
        out = [_describe(m, store) for m in pool.available() if m.path.is_file()]
        # Plain aliases are models too, as Ollama lists a copy (globs are not names).
        aliases = _aliases(pool.resolver)
        for name in sorted(aliases.aliases if aliases is not None else ()):
            if is_glob(name):
                continue
            try:
                model = pool.resolve(name)
            except KronkError:
                continue  # an alias of a model that is not here (yet)
            if model.path.is_file():
                out.append(_describe(model, store, name))
        return out

    return {"models": await asyncio.to_thread(listing)}


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION, "kronk_version": __version__}


# -- show ----------------------------------------------------------------------------------


def _capabilities(
    model: ResolvedModel, summary: GGUFSummary | None, loaded: LoadedModel | None, template: str
) -> list[str]:
    """What the model can do, in Ollama's words: the loaded model's own account, else the
    catalog's, else what its GGUF header shows."""
    if loaded is not None and loaded.capabilities:
        kronk_caps: set[str] = set(loaded.capabilities)
    elif model.capabilities is not None:
        kronk_caps = set(model.capabilities) | (
            {"completion"} if "chat" in model.capabilities else set()
        )
    elif summary is None:
        kronk_caps = set()
    elif summary.embedding_only:
        kronk_caps = {"embedding"}
    else:
        kronk_caps = {"completion"}
        if summary.has_fim:
            kronk_caps.add("fim")
        if template and template_supports_tools(template):
            kronk_caps.add("tools")
        if "<think>" in template:
            kronk_caps.add("reasoning")
    return sorted({_CAPABILITIES[c] for c in kronk_caps if c in _CAPABILITIES})


def _template(model: ResolvedModel, summary: GGUFSummary | None) -> str:
    """The chat template kronk renders with: the catalog's file, else the model's own."""
    override = model.load_options.get("chat_template")
    if override is not None and Path(str(override)).is_file():
        return Path(str(override)).read_text(encoding="utf-8")
    return summary.chat_template or "" if summary is not None else ""


def _parameters(model: ResolvedModel) -> str:
    """Default sampling parameters, one `name value` a line, as Ollama prints them."""
    defaults = model.load_options.get("sampling_defaults") or {}
    lines = []
    for key, value in sorted(defaults.items()):
        values = value if isinstance(value, list) else [value]
        lines += [f"{key:<31}{v}" for v in values]
    return "\n".join(lines)


def _show(
    model: ResolvedModel, loaded: LoadedModel | None, store: ModelStore | None
) -> dict[str, Any]:
    summary = _summary(model.path)
    info: dict[str, Any] = dict(summary.metadata) if summary is not None else {}
    if summary is not None:
        info["general.parameter_count"] = summary.n_params
    if loaded is not None:
        info["kronk.context_length"] = loaded.n_ctx  # the loaded context, per slot
        info["kronk.slots"] = loaded.slots
    described = _describe(model, store)
    template = _template(model, summary)
    return {
        "license": str(info.get("general.license", "")),
        "modelfile": f"# served by kronk from {model.path}\nFROM {model.path}\n",
        "parameters": _parameters(model),
        "template": template,
        "details": described["details"],
        "model_info": info,
        "capabilities": _capabilities(model, summary, loaded, template),
        "modified_at": described["modified_at"],
    }


@router.post("/api/show")
async def show(body: ShowRequest, request: Request) -> dict[str, Any]:
    pool = server_state(request).pool
    model = resolve_name(pool, body.model)
    loaded = next((m for m in pool.loaded() if m.id == model.id and m.status == "ready"), None)
    shown = await asyncio.to_thread(_show, model, loaded, _store(pool.resolver))
    if not may_see_paths(request):  # security.md: file paths only for `manage` callers
        shown["modelfile"] = f"# served by kronk\nFROM {model.id}\n"
    return shown


# -- ps ------------------------------------------------------------------------------------


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    models = await loaded_models(request)
    if not may_see_paths(request):  # security.md: file paths only for `manage` callers
        models = [{k: v for k, v in m.items() if k != "path"} for m in models]
    # kronk's own: the memory budget, what the models in the pool are estimated to take,
    # and the requests waiting for room to load theirs.
    return {"models": models, "memory": asdict(server_state(request).pool.memory())}


async def loaded_models(request: Request) -> list[dict[str, Any]]:
    """Loaded (and loading) models in Ollama's shape, with kronk's own fields beside:
    slots in use, memory, last use, TTL expiry, and live stats (recent speeds, time to
    first token, prompt-cache hit ratio, KV cache use). `expires_at` stays kronk's
    seconds since the epoch (null: busy, or kept for ever). `size` is the memory estimate
    the pool loaded the model by (`memory_estimate`, part by part, beside the RSS growth
    measured over the load, `memory_measured`); `size_vram` is 0 on a CPU build."""
    pool = server_state(request).pool
    live = request.app.state.telemetry.live()
    loaded = pool.loaded()
    on_gpu = supports_gpu_offload()

    def describe() -> list[dict[str, Any]]:
        store = _store(pool.resolver)
        out = []
        for m in loaded:
            path = Path(m.path)
            resolved = ResolvedModel(id=m.id, path=path)
            exists = path.is_file()
            size = m.memory_estimate["total"] if m.memory_estimate else m.memory_bytes
            out.append(
                {
                    "name": m.id,
                    "model": m.id,
                    "size": size,
                    "digest": _digest(resolved, store) if exists else "",
                    "details": _details(_summary(path) if exists else None),
                    "size_vram": size if on_gpu else 0,
                    "context_length": m.n_ctx,
                    **asdict(m),
                    **live.get(m.id, {}),
                }
            )
        return out

    return await asyncio.to_thread(describe)


# -- pull, delete, copy --------------------------------------------------------------------


def _pull_ref(name: str) -> str:
    """What to ask the store for: Ollama's `:latest` means the plain id."""
    if "://" in name:
        return name
    return name.removesuffix(":latest")


class _PullProgress:
    """DownloadProgress events from worker threads -> Ollama status lines on the loop, at
    most one a file every PROGRESS_INTERVAL_S (and every phase change and file end)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, event: DownloadProgress) -> None:
        key = (event.file, event.phase)
        now = time.monotonic()
        done = event.bytes_total is not None and event.bytes_done >= event.bytes_total
        if not done and key in self._last and now - self._last[key] < PROGRESS_INTERVAL_S:
            return
        self._last[key] = now
        status = {"download": f"pulling {event.file}", "verify": "verifying sha256 digest"}
        line: dict[str, Any] = {
            "status": status.get(event.phase, f"{event.phase} {event.file}"),
            "digest": event.file,
            "completed": event.bytes_done,
        }
        if event.bytes_total is not None:
            line["total"] = event.bytes_total
        self._loop.call_soon_threadsafe(self._queue.put_nowait, line)


def _pull_in_thread(
    store: ModelStore, ref: str, insecure: bool, progress: Callable[[DownloadProgress], None]
) -> str:
    from kronk.models.oci import is_oci_reference, pull_model

    if is_oci_reference(ref):
        local = pull_model(store, ref, insecure=insecure, progress=progress)
    else:
        local = store.pull(ref, progress=progress)
    return local.id


async def _pull_lines(store: ModelStore, ref: str, insecure: bool) -> AsyncIterator[dict[str, Any]]:
    """Ollama's pull status lines; a failure is the last line, `{"error": ...}`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    yield {"status": "pulling manifest"}
    # The pull cannot be interrupted: a client that goes away leaves it to finish (a
    # later pull of the same model then finds it present).
    task = asyncio.ensure_future(
        asyncio.to_thread(_pull_in_thread, store, ref, insecure, _PullProgress(loop, queue))
    )
    # Retrieved here, so a pull that fails after its client left logs no "never retrieved".
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    while not task.done() or not queue.empty():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
    try:
        task.result()
    except KronkError as exc:
        yield {"error": error_message(exc)}
        return
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


async def _store_of(request: Request) -> ModelStore:
    state = server_state(request)
    store = _store(state.pool.resolver)
    if store is not None:
        return store
    return await asyncio.to_thread(ModelStore, state.settings.home)  # reads the catalog


@router.post("/api/pull", response_model=None)
async def pull(body: PullRequest, request: Request) -> Response:
    store = await _store_of(request)
    if body.stream:
        lines = _pull_lines(store, _pull_ref(body.model), body.insecure)

        async def encoded() -> AsyncIterator[bytes]:
            async for line in lines:
                yield ndjson(line)

        async def nothing() -> None:
            return None

        return EventStreamResponse(encoded(), nothing, media_type=NDJSON)
    await asyncio.to_thread(
        _pull_in_thread, store, _pull_ref(body.model), body.insecure, lambda _event: None
    )
    return JSONResponse({"status": "success"})


async def _unload_for_removal(pool: ModelPool, model_id: str) -> None:
    if any(m.id == model_id for m in pool.loaded()) and not await pool.unload(model_id):
        raise InvalidRequestError(
            f"model {model_id!r} is in use; delete it when its requests have finished", "model"
        )


@router.delete("/api/delete", response_model=None)
async def delete(body: DeleteRequest, request: Request) -> Response:
    pool = server_state(request).pool
    store = await _store_of(request)

    def find() -> str:
        for candidate in candidate_ids(body.model):
            try:
                return store.get(candidate).id
            except ModelNotFoundError:
                continue
        raise ModelNotFoundError(f"model {body.model!r} not found", body.model)

    aliases = _aliases(pool.resolver)
    for name in candidate_ids(body.model):  # deleting a copy deletes only that name
        if aliases is not None and name in aliases.aliases:
            aliases.remove_alias(name)
            return Response(status_code=200)
    model_id = await asyncio.to_thread(find)
    await _unload_for_removal(pool, model_id)
    await asyncio.to_thread(store.remove, model_id)
    return Response(status_code=200)


@router.post("/api/copy", response_model=None)
async def copy(body: CopyRequest, request: Request) -> Response:
    """A copy is a new name for the same model (a runtime alias): it shares the file and
    the loaded copy, and lasts until the server stops (config `aliases:` keeps one)."""
    pool = server_state(request).pool
    source = resolve_name(pool, body.source)  # 404 for an unknown source
    aliases = _aliases(pool.resolver)
    if aliases is None:
        raise UnsupportedFeatureError(
            "copying a model needs the server's alias map, which this server lacks", "source"
        )
    destination = body.destination.removesuffix(":latest")
    if destination in {m.id for m in pool.available()}:
        raise InvalidRequestError(f"a model named {destination!r} exists already", "destination")
    try:
        aliases.add_alias(destination, source.id)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, "destination") from None
    return Response(status_code=200)


__all__ = ["OLLAMA_VERSION", "loaded_models"]
