"""Request checks that keep other web pages away from the local API.

Any page the user visits can send requests to 127.0.0.1, so the server:

* answers only to loopback Host names while bound to loopback, which stops
  DNS rebinding (evil.example resolving to 127.0.0.1);
* refuses POSTs whose Origin is neither this server nor an opted-in origin,
  and POSTs that are not `application/json`, so an HTML form or a "simple"
  cross-site fetch cannot drive the model (llama.cpp PR #25606);
* sends CORS headers only for origins listed with --cors-origin, never by
  reflecting whatever Origin arrived;
* requires the API key, when one is set, everywhere except /health and the
  chat page's static files.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from flask import Request, Response

from runtime.config import ServerConfig, is_loopback_host
from runtime.errors import Forbidden, Unauthorized, UnsupportedMediaType

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key"
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"


def _hostname(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


def check_host(config: ServerConfig, request: Request) -> None:
    if not config.is_loopback:
        return  # bound publicly on purpose; the API key is the guard there
    name = _hostname(request.host)
    if not (is_loopback_host(name) or name.endswith(".localhost")):
        raise Forbidden(f"Host '{request.host}' is not served here; use {config.browser_url}",
                        code="host_not_allowed")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def check_api_key(config: ServerConfig, request: Request) -> None:
    if not config.api_key or is_public(request.path):
        return
    supplied = request.headers.get("X-API-Key", "")
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        supplied = auth[7:].strip()
    if not supplied:
        raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(supplied.encode(), config.api_key.encode()):
        raise Unauthorized("the API key is not valid")


def origin_allowed(config: ServerConfig, request: Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser cross-origin request (curl, SDKs)
    if origin in config.cors_origins:
        return True
    return origin == f"{request.scheme}://{request.host}"


def check_post(config: ServerConfig, request: Request) -> None:
    if request.method != "POST":
        return
    if not origin_allowed(config, request):
        raise Forbidden(f"requests from origin '{request.headers.get('Origin')}' are not allowed; "
                        "start the server with --cors-origin ORIGIN to allow one", code="origin_not_allowed")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("the request body must be JSON sent with 'Content-Type: application/json'")


def add_cors_headers(config: ServerConfig, request: Request, response: Response) -> Response:
    origin = request.headers.get("Origin")
    if origin and origin in config.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
        response.headers["Access-Control-Max-Age"] = "600"
        response.vary.add("Origin")
    return response


PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def add_page_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        # Model output is untrusted HTML-ish text; the CSP is the second wall after DOMPurify.
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers["X-Frame-Options"] = "DENY"
    return response
