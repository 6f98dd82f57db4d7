"""The composition root: build every part from one Settings object and wire the app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from chatplane import __version__
from chatplane.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="chatplane", version=__version__)
    app.state.settings = settings

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app
