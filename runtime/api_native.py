"""llama.cpp server's native endpoints, so llamafile and llama-server clients work unchanged.

/completion, /tokenize, /detokenize, /props, /health and /slots follow the
shapes llama-server returns (LangChain's `Llamafile` posts to /completion).
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, jsonify

from runtime import __version__, params
from runtime.app import engine, json_body, server_config
from runtime.engine import JobStats, ModelInfo
from runtime.errors import InvalidRequest
from runtime.streaming import sse, stream_response, submit, wait_result

native = Blueprint("native", __name__)


@native.get("/health")
def health() -> Response:
    eng = engine()
    if eng.ready:
        return jsonify({"status": "ok"})
    if eng.load_error:
        response = jsonify({"status": "error", "error": eng.load_error})
    else:
        response = jsonify({"status": "loading"})
    response.status_code = 503
    return response


def _final(text: str, stats: JobStats, req: params.Request, info: ModelInfo) -> dict:
    prompt = req.params["prompt"]
    settings = {k: v for k, v in req.params.items() if k not in ("prompt", "grammar")}
    return {
        "index": 0, "id_slot": 0, "content": text, "stop": True, "model": info.model_id,
        "tokens_predicted": stats.completion_tokens, "tokens_evaluated": stats.prompt_tokens,
        "tokens_cached": stats.cached_tokens, "truncated": False,
        "stop_type": stats.stop_type, "stopping_word": _stopping_word(text, stats, req),
        "prompt": prompt if isinstance(prompt, str) else "",
        "generation_settings": {"n_ctx": info.n_ctx, "n_predict": req.params.get("max_tokens"), **settings},
        "timings": stats.timings(),
    }


def _stopping_word(text: str, stats: JobStats, req: params.Request) -> str:
    stops = req.params.get("stop") or []
    return stops[0] if stats.stop_type == "word" and len(stops) == 1 else ""


@native.post("/completion")
@native.post("/completions")
def completion() -> Response:
    req = params.native_completion_request(json_body())
    if "grammar" in req.params:
        kind, value = req.params["grammar"]
        req.params["grammar"] = (engine().grammar(gbnf=value) if kind == "gbnf"
                                 else engine().grammar(schema=value, field="json_schema"))
    info = engine().model_info()  # resolved here: the stream body runs outside the app context
    job = submit("completion", req)
    if not req.stream:
        result, stats = wait_result(job)
        return jsonify(_final(result["choices"][0]["text"], stats, req, info))

    def on_chunk(chunk: dict) -> Iterator[str]:
        text = chunk["choices"][0]["text"]
        if text:
            yield sse({"index": 0, "id_slot": 0, "content": text, "stop": False})

    def on_done(stats: JobStats) -> Iterator[str]:
        yield sse(_final("", stats, req, info))

    return stream_response(job, on_chunk, on_done)


@native.post("/tokenize")
def tokenize() -> Response:
    body = json_body()
    content = body.get("content")
    if not isinstance(content, str):
        raise InvalidRequest("'content' must be a string", param="content")
    add_special = params._bool(body, "add_special")
    parse_special = params._bool(body, "parse_special", default=True)
    tokens = engine().tokenize(content, add_special=add_special, parse_special=parse_special)
    if params._bool(body, "with_pieces"):
        return jsonify({"tokens": [{"id": t, "piece": engine().token_piece(t)} for t in tokens]})
    return jsonify({"tokens": tokens})


@native.post("/detokenize")
def detokenize() -> Response:
    tokens = json_body().get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise InvalidRequest("'tokens' must be a list of token ids", param="tokens")
    return jsonify({"content": engine().detokenize(tokens)})


@native.get("/props")
def props() -> Response:
    info = engine().model_info()
    config = server_config()
    return jsonify({
        "model": info.model_id,
        "model_path": info.path,
        "n_ctx": info.n_ctx,
        "total_slots": 1,
        "chat_template": info.chat_template or "",
        "chat_format": info.chat_format,
        "modalities": {"vision": False, "audio": False},
        "default_generation_settings": {"n_ctx": info.n_ctx, "params": config.defaults},
        "build_info": f"furoshiki {__version__}, llama-cpp-python {info.llama_cpp_python}",
        "furoshiki": {
            "version": __version__, "title": config.title, "n_params": info.n_params, "n_vocab": info.n_vocab,
            "n_ctx_train": info.n_ctx_train, "size": info.size_bytes, "embeddings": info.embeddings,
            "system_info": info.system_info, "api_key_required": bool(config.api_key),
            "hardware": config.hardware,
        },
    })


@native.get("/slots")
def slots() -> Response:
    eng = engine()
    last = eng.last_stats
    return jsonify([{
        "id": 0, "is_processing": eng.busy, "queued": eng.queued, "jobs_done": eng.jobs_done,
        "last": None if last is None else {"finish": last.finish, "stop_type": last.stop_type,
                                           "usage": last.usage(), "timings": last.timings()},
    }])
