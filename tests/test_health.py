from __future__ import annotations

import httpx

from chatplane.app import create_app
from chatplane.settings import Settings


async def test_healthz_answers_ok(tmp_path: object) -> None:
    app = create_app(Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
