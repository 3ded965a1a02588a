"""The Flask application factory: `create_app(config, engine)`.

The engine lives in `app.extensions["furoshiki"]`; views reach it through
`engine()` and never through a global, so tests build apps around a fake
engine or a real tiny model alike. Views raise `APIError`s; the one handler
here turns each into OpenAI's `{"error": {...}}` with the right status.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from runtime import __version__, security
from runtime.config import ServerConfig
from runtime.errors import APIError, InvalidRequest, ServerBusy

log = logging.getLogger("furoshiki.http")


def resource_dir() -> Path:
    """Where templates/ lives: next to runtime/ from source, under _MEIPASS when frozen."""
    bundle = getattr(sys, "_MEIPASS", None)
    return Path(bundle) if bundle else Path(__file__).resolve().parent.parent


def create_app(config: ServerConfig, engine: Any) -> Flask:
    templates = resource_dir() / "templates"
    app = Flask("furoshiki", template_folder=str(templates), static_folder=str(templates / "static"),
                static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.ensure_ascii = False  # Japanese stays readable in responses
    app.extensions["furoshiki"] = {"config": config, "engine": engine}

    from runtime.api_native import native
    from runtime.api_openai import openai

    app.register_blueprint(openai)
    app.register_blueprint(native)
    _register_page(app)
    _register_guards(app, config)
    _register_errors(app)
    return app


def engine() -> Any:
    return current_app.extensions["furoshiki"]["engine"]


def server_config() -> ServerConfig:
    return current_app.extensions["furoshiki"]["config"]


def json_body() -> dict:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    return body


def _register_page(app: Flask) -> None:
    @app.get("/")
    def index() -> str:
        config = server_config()
        page = {"title": config.title, "defaults": config.defaults, "needsKey": bool(config.api_key),
                "version": __version__}
        return render_template("index.html", page_config=json.dumps(page, ensure_ascii=False),
                               title=config.title or "furoshiki")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return app.send_static_file("favicon.svg")


def _register_guards(app: Flask, config: ServerConfig) -> None:
    @app.before_request
    def guard() -> Response | None:
        security.check_host(config, request)
        if request.method == "OPTIONS":
            # CORS preflight: only answered for opted-in origins.
            if request.headers.get("Origin") in config.cors_origins:
                return Response(status=204)
            raise security.Forbidden("cross-origin requests are not enabled for this origin",
                                     code="origin_not_allowed")
        security.check_api_key(config, request)
        security.check_post(config, request)
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        security.add_cors_headers(config, request, response)
        return security.add_page_headers(response)


def _error_response(err: APIError) -> Response:
    response = jsonify(err.to_dict())
    response.status_code = err.status
    if isinstance(err, ServerBusy):
        response.headers["Retry-After"] = str(err.retry_after)
    return response


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _register_errors(app: Flask) -> None:
    @app.errorhandler(APIError)
    def api_error(err: APIError) -> Response:
        return _error_response(err)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        status = err.code or 500
        if status == 404:
            message = f"unknown route: {request.method} {request.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif status == 413:
            message = f"the request body is larger than the {server_config().max_body_bytes} byte limit"
        else:
            message = err.description or err.name
        error = APIError(message, code=_HTTP_CODES.get(status, err.name.lower().replace(" ", "_")))
        error.status = status
        error.type = "invalid_request_error" if status < 500 else "server_error"
        return _error_response(error)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(APIError(f"internal error: {err.__class__.__name__}"))
