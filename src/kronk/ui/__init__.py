"""The browser UI: static files (HTML, ES modules, CSS; no build step) served at `/ui/`,
with `/` redirecting there. It talks to the server only through its public APIs (the
OpenAI API for chat and fill-in-the-middle, `/manage/` for models, `/metrics`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def install_ui(app: FastAPI) -> None:
    """Serve the UI at `/ui/` and send `/` there."""

    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    app.add_api_route("/", home, methods=["GET"], include_in_schema=False)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")


__all__ = ["STATIC_DIR", "install_ui"]
