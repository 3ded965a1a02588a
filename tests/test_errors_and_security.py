"""Every user error is a JSON 4xx in OpenAI's shape, and the server stays up.

Also the security defaults: Host and Origin checks, API key, CORS opt-in.
"""

from __future__ import annotations

import pytest
import requests

from runtime.app import create_app
from runtime.config import EngineConfig, ServerConfig
from runtime.engine import Engine
from tests.conftest import live_server

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    if code:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("path, body, param", [
    (CHAT, {}, "messages"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": [{"content": "no role"}]}, "messages"),
    (CHAT, {"messages": [{"role": "user"}]}, "messages"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages"),
    (CHAT, {"messages": MSG, "max_tokens": 0}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_tokens": -3}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_tokens": "5"}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_tokens": 1.5}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_tokens": True}, "max_tokens"),
    (CHAT, {"messages": MSG, "temperature": "hot"}, "temperature"),
    (CHAT, {"messages": MSG, "temperature": 9}, "temperature"),
    (CHAT, {"messages": MSG, "top_p": 2}, "top_p"),
    (CHAT, {"messages": MSG, "top_k": 1.5}, "top_k"),
    (CHAT, {"messages": MSG, "seed": "x"}, "seed"),
    (CHAT, {"messages": MSG, "stop": 5}, "stop"),
    (CHAT, {"messages": MSG, "stop": ["a"] * 17}, "stop"),
    (CHAT, {"messages": MSG, "logit_bias": {"x": 1}}, "logit_bias"),
    (CHAT, {"messages": MSG, "logit_bias": {"5": 1000}}, "logit_bias"),
    (CHAT, {"messages": MSG, "stream": "yes"}, "stream"),
    (CHAT, {"messages": MSG, "n": 2}, "n"),
    (CHAT, {"messages": MSG, "response_format": {"type": "xml"}}, "response_format"),
    (CHAT, {"messages": MSG, "response_format": {"type": "json_schema"}}, "response_format"),
    (CHAT, {"messages": MSG, "tools": "all"}, "tools"),
    (CHAT, {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ("/completion", {"prompt": "a", "n_predict": 0}, "n_predict"),
    ("/completion", {"prompt": "a", "grammar": "root ::= ("}, "grammar"),
    ("/completion", {"prompt": "a", "grammar": 5}, "grammar"),
    ("/completion", {"prompt": "a", "grammar": 'root ::= "a" undefined-rule'}, "grammar"),
    ("/completion", {"prompt": "a", "json_schema": {"$ref": "#/definitions/missing"}}, "json_schema"),
    (CHAT, {"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}, "response_format"),
    ("/tokenize", {"content": 5}, "content"),
    ("/detokenize", {"tokens": ["a"]}, "tokens"),
    ("/detokenize", {"tokens": [10 ** 9]}, "tokens"),
    ("/v1/embeddings", {"input": 5}, "input"),
])
def test_bad_fields_get_a_400_naming_the_field(server, path, body, param):
    error = assert_error(server.post(path, body), 400)
    assert error["param"] == param, error


def test_bad_json_and_non_objects(server):
    for raw in (b"{not json", b"[1, 2]", b"", b"\xff\xfe"):
        r = requests.post(server.url + CHAT, data=raw, headers={"Content-Type": "application/json"}, timeout=10)
        assert_error(r, 400)


def test_prompt_longer_than_context(server):
    long = "word " * 5000
    assert_error(server.post(CHAT, {"messages": [{"role": "user", "content": long}]}), 400,
                 "context_length_exceeded")
    assert_error(server.post("/completion", {"prompt": long}), 400, "context_length_exceeded")
    r = server.post(CHAT, {"messages": [{"role": "user", "content": long}], "stream": True})
    assert_error(r, 400, "context_length_exceeded")  # before the stream starts, not inside it


def test_oversized_body_is_413(tiny_model):
    with live_server(tiny_model, max_body_bytes=2048) as srv:
        assert_error(srv.post(CHAT, {"messages": [{"role": "user", "content": "x" * 4096}]}), 413,
                     "request_too_large")
        assert srv.get("/health").status_code == 200


def test_unknown_route_and_method(server):
    assert_error(server.get("/nope"), 404, "not_found")
    assert_error(server.get(CHAT), 405, "method_not_allowed")


def test_wrong_content_type_is_refused(server):
    # A cross-site <form> or "simple" fetch can only send these content types.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = requests.post(server.url + CHAT, data='{"messages": []}', headers={"Content-Type": ctype}, timeout=10)
        assert_error(r, 415, "unsupported_media_type")


def test_foreign_origin_is_refused_same_origin_allowed(server):
    body = {"prompt": "hi", "n_predict": 1}
    r = server.post("/completion", body, headers={"Origin": "https://evil.example"})
    assert_error(r, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in r.headers
    r = server.post("/completion", body, headers={"Origin": server.url})
    assert r.status_code == 200


def test_dns_rebinding_host_is_refused(server):
    assert_error(server.get("/props", headers={"Host": "evil.example:8080"}), 403, "host_not_allowed")
    assert server.get("/props", headers={"Host": "localhost"}).status_code == 200


def test_server_survives_all_of_the_above(server):
    assert server.get("/health").json() == {"status": "ok"}
    assert server.post(CHAT, {"messages": MSG, "max_tokens": 2}).status_code == 200


def test_api_key_guards_everything_but_health_and_page(tiny_model):
    with live_server(tiny_model, api_key="s3cret") as srv:
        assert srv.get("/health").status_code == 200
        assert srv.get("/").status_code == 200
        assert srv.get("/static/app.js").status_code == 200
        for path in ("/props", "/v1/models", "/slots"):
            assert_error(srv.get(path), 401, "invalid_api_key")
        assert_error(srv.post(CHAT, {"messages": MSG}), 401)
        assert_error(srv.get("/props", headers={"Authorization": "Bearer wrong"}), 401)
        assert srv.get("/props", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert srv.get("/props", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_cors_is_opt_in_and_never_reflects(tiny_model):
    allowed = "http://localhost:3000"
    with live_server(tiny_model, cors_origins=(allowed,)) as srv:
        pre = requests.options(srv.url + CHAT, headers={"Origin": allowed,
                                                        "Access-Control-Request-Method": "POST"}, timeout=10)
        assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == allowed
        r = srv.post("/completion", {"prompt": "a", "n_predict": 1}, headers={"Origin": allowed})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == allowed
        evil = requests.options(srv.url + CHAT, headers={"Origin": "http://evil.example"}, timeout=10)
        assert evil.status_code == 403 and "Access-Control-Allow-Origin" not in evil.headers


def test_loading_state_before_the_model_is_ready(tiny_model):
    engine = Engine(EngineConfig(model_path=str(tiny_model)))  # never loaded
    client = create_app(ServerConfig(), engine).test_client()
    r = client.get("/health")
    assert r.status_code == 503 and r.get_json() == {"status": "loading"}
    for path in ("/v1/models", "/props"):
        r = client.get(path)
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "model_loading"
    r = client.post(CHAT, json={"messages": MSG})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "model_loading"
