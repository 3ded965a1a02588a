"""Submitting jobs from a request, and turning their events into responses.

The first event is awaited before the response starts, so an error that
happens before the first token (prompt too long, bad template, queue full)
is still a proper JSON 4xx and not a half-open event stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Response, request

from runtime.app import engine
from runtime.engine import Job, JobStats
from runtime.errors import APIError
from runtime.params import Request

SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def submit(kind: str, req: Request) -> Job:
    # waitress reports a vanished client here (channel_request_lookahead > 0),
    # so the engine can stop within a token even when nothing is being written.
    is_disconnected = request.environ.get("waitress.client_disconnected")
    return engine().submit(Job(kind, req.params, req.stream, is_disconnected))


class Cancelled(APIError):
    status = 503
    code = "cancelled"


def wait_result(job: Job) -> tuple[Any, JobStats]:
    result = None
    try:
        for kind, payload in job.events():
            if kind == "result":
                result = payload
    finally:
        job.cancel("request ended")
    if result is None:
        raise Cancelled(f"the generation was cancelled ({job.cancel_reason or 'unknown reason'})")
    return result, job.stats


def stream_response(job: Job, on_chunk: Callable[[Any], Iterable[str]],
                    on_done: Callable[[JobStats], Iterable[str]]) -> Response:
    events = job.events()
    try:
        first = next(events)
    except BaseException:
        job.cancel("request ended")
        raise

    def body() -> Iterator[str]:
        try:
            kind, payload = first
            while True:
                if kind == "chunk":
                    yield from on_chunk(payload)
                elif kind == "done":
                    yield from on_done(payload)
                    return
                kind, payload = next(events)
        except APIError as err:
            yield sse(err.to_dict())
        finally:
            # Runs on normal completion and when waitress closes the iterator
            # because the client went away: either way the engine stops.
            job.cancel("client disconnected")

    return Response(body(), mimetype="text/event-stream", headers=SSE_HEADERS)
