"""Metrics: HTTP request metrics as an ASGI middleware around the Starlette app, and the
/metrics route. Requests are labelled by the route *template* Starlette matched
(`/v1/streams/{stream_id}`), never the raw path: ids in paths would make one series per id."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from turnstream.metrics.registry import CONTENT_TYPE, Metrics

UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering
        began = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            key = (method, route, str(status))
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.metrics.http_requests.labels(method, route, str(status)),
                    self.metrics.http_seconds.labels(method, route),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - began)


def endpoint(metrics: Metrics) -> Any:
    """GET /metrics: the Prometheus text format (of every worker, in multiprocess mode)."""

    async def scrape(_request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return scrape
