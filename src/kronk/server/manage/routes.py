"""The management API under `/manage/`: what the browser UI (and scripts) need to look
after a server's models. Errors are OpenAI's shape; anything that reads or hashes model
files runs in a worker thread, never on the event loop. Pulls, imports and
verifications stream their progress (`pulls.py`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from kronk.errors import ModelNotFoundError
from kronk.models.catalog import CatalogEntry
from kronk.models.download import DownloadProgress
from kronk.models.index import VerifyResult
from kronk.models.store import LocalModel, ModelStore
from kronk.server.common import server_state
from kronk.server.errors import protocol_route
from kronk.server.manage.pulls import Job, job_stream, jobs_of
from kronk.server.openai.errors import render

router = APIRouter(prefix="/manage", route_class=protocol_route(render), tags=["manage"])


class PullBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)  # a catalog id, an http(s) URL or an oci:// reference
    sha256: str | None = None
    id: str | None = None  # the local id for a URL pull


class ImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)  # a GGUF file or sentence-transformers folder on the server
    id: str | None = None
    link: bool = True  # hard-link when the file system allows (no second copy)


# -- the store -----------------------------------------------------------------------------


def _find_store(resolver: object) -> ModelStore | None:
    """The model store under the server's resolver (alias map, chain of resolvers)."""
    if isinstance(resolver, ModelStore):
        return resolver
    for inner in (getattr(resolver, "base", None), *getattr(resolver, "resolvers", ())):
        found = _find_store(inner) if inner is not None else None
        if found is not None:
            return found
    return None


async def store_of(request: Request) -> ModelStore:
    """The server's own store, else one over the settings' home (reading the catalog
    blocks, hence the thread)."""
    state = server_state(request)
    store = _find_store(state.pool.resolver)
    if store is None:
        store = getattr(request.app.state, "manage_store", None)
    if store is None:
        store = await asyncio.to_thread(ModelStore, state.settings.home)
        request.app.state.manage_store = store
    return store


def _verifications(request: Request) -> dict[str, dict[str, Any]]:
    """Results of verifications run through this server, by model id (in memory)."""
    found: dict[str, dict[str, Any]] | None = getattr(request.app.state, "manage_verified", None)
    if found is None:
        found = request.app.state.manage_verified = {}
    return found


def _catalog_size(entry: CatalogEntry) -> int | None:
    sizes = [f.size for f in entry.files]
    return sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None


def catalog_json(entry: CatalogEntry, pulled: bool) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "family": entry.family,
        "category": entry.category,
        "capabilities": sorted(entry.capabilities),
        "parameters": entry.parameters,
        "quantization": entry.quantization,
        "size": _catalog_size(entry),
        "description": entry.description,
        "license": entry.license,
        "pulled": pulled,
    }


def local_json(model: LocalModel, verification: dict[str, Any] | None) -> dict[str, Any]:
    caps = sorted(model.catalog.capabilities) if model.catalog is not None else None
    return {
        "id": model.id,
        "in_store": True,
        "path": str(model.path),
        "size": model.size,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in model.files],
        "capabilities": caps,
        "catalog_id": model.catalog_id,
        "source": model.source,
        "added_at": model.added_at,
        # Every file's sha256 was checked when it arrived; sizes are checked on listing.
        "verification": verification or {"status": "verified on arrival", "checked_at": None},
    }


def verify_json(result: VerifyResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "ok": result.ok,
        "problems": result.problems,
        "files": [asdict(f) for f in result.files],
    }


# -- models and catalog --------------------------------------------------------------------


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The store's models, then any other model the server can serve (a `--model` file),
    each marked loaded or not."""
    store = await store_of(request)
    pool = server_state(request).pool
    verified = _verifications(request)

    def collect() -> list[dict[str, Any]]:
        local = [local_json(m, verified.get(m.id)) for m in store.list_local()]
        known = {m["id"] for m in local}
        for other in pool.resolver.available():
            if other.id in known:
                continue
            size = other.path.stat().st_size if other.path.is_file() else None
            caps = sorted(other.capabilities) if other.capabilities is not None else None
            local.append(
                {
                    "id": other.id,
                    "in_store": False,
                    "path": str(other.path),
                    "size": size,
                    "files": [],
                    "capabilities": caps,
                    "catalog_id": None,
                    "source": other.owned_by,
                    "added_at": other.created,
                    "verification": {"status": "not in the store", "checked_at": None},
                }
            )
        return local

    models = await asyncio.to_thread(collect)
    loaded = {m.id: m.status for m in pool.loaded()}
    for model in models:
        model["loaded"] = loaded.get(model["id"])
    return {"object": "list", "models": models}


@router.get("/catalog")
async def catalog(request: Request, q: str = "", category: str | None = None) -> dict[str, Any]:
    """The catalog, filtered by words (all must appear in id, name, family, description
    or capabilities) and by category."""
    store = await store_of(request)
    words = q.lower().split()

    def collect() -> list[dict[str, Any]]:
        pulled = {m.id for m in store.list_local()}
        out = []
        for entry in store.catalog.list(category):
            text = " ".join(
                [entry.id, entry.name, entry.family, entry.description, *entry.capabilities]
            ).lower()
            if all(w in text for w in words):
                out.append(catalog_json(entry, entry.id in pulled))
        return out

    return {"object": "list", "models": await asyncio.to_thread(collect)}


@router.delete("/models/{model_id}")
async def remove_model(model_id: str, request: Request) -> dict[str, Any]:
    """Unload the model if it is loaded and idle, then delete its files."""
    store = await store_of(request)
    unloaded = await server_state(request).pool.unload(model_id)
    await asyncio.to_thread(store.remove, model_id)
    _verifications(request).pop(model_id, None)
    return {"id": model_id, "removed": True, "unloaded": unloaded}


# -- long work, streamed -----------------------------------------------------------------------


@router.post("/pull", response_model=None)
async def pull(body: PullBody, request: Request) -> Response:
    store = await store_of(request)

    def work(progress: Any) -> dict[str, Any]:
        # The store takes catalog ids, http(s) URLs and oci:// references alike.
        local = store.pull(body.model, sha256=body.sha256, model_id=body.id, progress=progress)
        return {"model": local_json(local, None)}

    return job_stream(request, Job("pull", body.model), work)


@router.post("/import", response_model=None)
async def import_model(body: ImportBody, request: Request) -> Response:
    store = await store_of(request)

    def work(progress: Any) -> dict[str, Any]:
        local = store.import_path(body.path, model_id=body.id, link=body.link, progress=progress)
        return {"model": local_json(local, None)}

    return job_stream(request, Job("import", body.path), work)


@router.post("/models/{model_id}/verify", response_model=None)
async def verify(model_id: str, request: Request) -> Response:
    """Re-hash the model's files; one that fails leaves the index (as `kronk model verify`)."""
    store = await store_of(request)
    if await asyncio.to_thread(store.index.get, model_id) is None:
        raise ModelNotFoundError(f"model {model_id!r} is not in the store", model_id)
    verified = _verifications(request)

    def work(progress: Any) -> dict[str, Any]:
        def on_hash(name: str, done: int, size: int) -> None:
            progress(DownloadProgress(name, done, size, 0.0, None, "verify"))

        results = store.verify(model_id, progress=on_hash)
        for r in results:
            verified[r.id] = {
                "status": "verified" if r.ok else "failed",
                "checked_at": time.time(),
                "problems": r.problems,
            }
        return {"results": [verify_json(r) for r in results]}

    return job_stream(request, Job("verify", model_id), work)


@router.get("/jobs")
async def list_jobs(request: Request) -> dict[str, Any]:
    return {"object": "list", "jobs": [j.describe() for j in jobs_of(request).all()]}


@router.delete("/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    job = jobs_of(request).get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} is running")
    job.cancelled.set()
    return {"job": job_id, "cancelled": True}
