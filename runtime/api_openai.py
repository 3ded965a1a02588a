"""OpenAI-compatible endpoints under /v1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify

from runtime import params
from runtime.app import engine, json_body
from runtime.engine import JobStats
from runtime.streaming import SSE_DONE, sse, stream_response, submit, wait_result

openai = Blueprint("openai", __name__)


def _model_card() -> dict:
    info = engine().model_info()
    return {"id": info.model_id, "object": "model", "created": int(time.time()), "owned_by": "furoshiki",
            "meta": {"n_ctx": info.n_ctx, "n_ctx_train": info.n_ctx_train, "n_params": info.n_params,
                     "n_vocab": info.n_vocab, "size": info.size_bytes}}


@openai.get("/v1/models")
def models() -> Response:
    return jsonify({"object": "list", "data": [_model_card()]})


def _generate(kind: str, req: params.Request, chunk_object: str) -> Response:
    job = submit(kind, req)
    if not req.stream:
        result, stats = wait_result(job)
        result["usage"] = stats.usage()
        result["timings"] = stats.timings()
        return jsonify(result)

    last: dict[str, Any] = {}

    def on_chunk(chunk: dict) -> Iterator[str]:
        last.update(id=chunk.get("id"), created=chunk.get("created"), model=chunk.get("model"))
        yield sse(chunk)

    def on_done(stats: JobStats) -> Iterator[str]:
        if req.include_usage:
            # OpenAI's shape: one extra chunk, no choices, carrying usage.
            yield sse({**last, "object": chunk_object, "choices": [], "usage": stats.usage(),
                       "timings": stats.timings()})
        yield SSE_DONE

    return stream_response(job, on_chunk, on_done)


def _compile_grammars(req: params.Request) -> None:
    """Parse schema-derived grammars up front: a bad one must be a 400, not a crash."""
    fmt = req.params.get("response_format")
    if fmt and "schema" in fmt:
        req.params["grammar"] = engine().grammar(schema=fmt["schema"], field="response_format")
        del req.params["response_format"]
    choice = req.params.get("tool_choice")
    if isinstance(choice, dict):
        tool = next(t for t in req.params["tools"] if t["function"]["name"] == choice["function"]["name"])
        engine().grammar(schema=tool["function"]["parameters"], field="tools")


@openai.post("/v1/chat/completions")
def chat_completions() -> Response:
    req = params.chat_request(json_body())
    _compile_grammars(req)
    return _generate("chat", req, "chat.completion.chunk")


@openai.post("/v1/completions")
def completions() -> Response:
    return _generate("completion", params.completion_request(json_body()), "text_completion")


@openai.post("/v1/embeddings")
def embeddings() -> Response:
    job = submit("embed", params.embedding_request(json_body()))
    result, _ = wait_result(job)
    return jsonify(result)
