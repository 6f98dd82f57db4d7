"""Every endpoint and dependency of the app is a coroutine. FastAPI runs a plain `def` one in
a worker thread: a thread hop on every request that uses it, and a place in a pool of 40
threads shared by the whole process."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from chatplane.app import create_app
from tests.conftest import make_settings


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's routes and those of the routers it includes (FastAPI keeps an included
    router as one route that holds it)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _runs_on_the_loop(call: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = None if inspect.isclass(call) else getattr(call, "__call__", None)  # noqa: B004
    return method is not None and inspect.iscoroutinefunction(method)


def test_no_endpoint_or_dependency_runs_in_a_thread(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    routes = list(_api_routes(app.routes))
    assert len(routes) > 50  # the whole API is here, not a part of it
    in_threads = sorted(
        {
            f"{route.path}: {call.__module__}.{call.__qualname__}"
            for route in routes
            for call in _calls(route.dependant)
            if not _runs_on_the_loop(call)
        }
    )
    assert in_threads == []
