"""Validate request bodies at the door and turn them into llama-cpp-python kwargs.

Every rejection is an `InvalidRequest` naming the field and what was wrong
with it, so a client sees a 400 it can act on, never a 500 from deep inside
llama.cpp. Unknown fields are ignored, as OpenAI-compatible servers do, so
clients that send extra options keep working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidRequest, NotSupported

MAX_STOP_STRINGS = 16
_MISSING = object()


@dataclass(frozen=True)
class Request:
    params: dict[str, Any]     # keyword arguments for llama-cpp-python
    stream: bool
    include_usage: bool = False


def _number(body: dict, name: str, lo: float | None = None, hi: float | None = None,
            integer: bool = False) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return _MISSING
    kind = "an integer" if integer else "a number"
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not (isinstance(value, int) or float(value).is_integer())):
        raise InvalidRequest(f"'{name}' must be {kind}, got {json.dumps(value)[:40]}", param=name)
    if integer:
        value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise InvalidRequest(f"'{name}' must be {bounds}, got {value}", param=name)
    return value


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be true or false", param=name)
    return value


def _stop(body: dict) -> list[str] | object:
    value = body.get("stop", _MISSING)
    if value is _MISSING or value is None:
        return _MISSING
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")
    if len(value) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"'stop' may hold at most {MAX_STOP_STRINGS} strings", param="stop")
    return [s for s in value if s]


def _logit_bias(body: dict) -> dict[str, float] | object:
    value = body.get("logit_bias", _MISSING)
    if value is _MISSING or value is None:
        return _MISSING
    pairs: list[tuple[Any, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]  # llama-server's [[token, bias], ...]
    else:
        raise InvalidRequest("'logit_bias' must map token ids to numbers", param="logit_bias")
    out: dict[str, float] = {}
    for token, bias in pairs:
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            raise InvalidRequest(f"'logit_bias' key {token!r} is not a token id", param="logit_bias") from None
        if bias is False:  # llama-server: false means "never"
            bias = -100.0
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise InvalidRequest(f"'logit_bias' for token {token_id} must be a number from -100 to 100",
                                 param="logit_bias")
        out[str(token_id)] = float(bias)
    return out


def _max_tokens(body: dict, *names: str) -> Any:
    for name in names:
        value = body.get(name, _MISSING)
        if value is _MISSING or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidRequest(f"'{name}' must be a positive integer, got {json.dumps(value)[:40]}",
                                 param=name)
        return value
    return _MISSING


def sampling(body: dict) -> dict[str, Any]:
    """The sampling options shared by every generation endpoint."""
    found = {
        "temperature": _number(body, "temperature", 0, 5),
        "top_p": _number(body, "top_p", 0, 1),
        "top_k": _number(body, "top_k", 0, integer=True),
        "min_p": _number(body, "min_p", 0, 1),
        "seed": _number(body, "seed", integer=True),
        "presence_penalty": _number(body, "presence_penalty", -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
        "repeat_penalty": _number(body, "repeat_penalty", 0, 10),
        "stop": _stop(body),
        "logit_bias": _logit_bias(body),
    }
    return {k: v for k, v in found.items() if v is not _MISSING}


def _only_one_choice(body: dict) -> None:
    n = _number(body, "n", 1, integer=True)
    if n is not _MISSING and n != 1:
        raise NotSupported("only n=1 is supported: this server runs one generation at a time", param="n")


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    return stream, _bool(options, "include_usage")


# ---- /v1/chat/completions ---------------------------------------------------
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _message(i: int, message: Any) -> dict:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object with 'role' and 'content'", param="messages")
    role = message.get("role")
    if role not in _ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}, got {role!r}",
                             param="messages")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise NotSupported(f"'{where}.content' has a part of type {kind!r}; this model takes text only",
                                   param="messages")
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"'{where}.content' text parts need a string 'text'", param="messages")
            texts.append(part["text"])
        content = "".join(texts)
    elif content is None:
        if role != "assistant" or not message.get("tool_calls"):
            raise InvalidRequest(f"'{where}.content' is missing", param="messages")
    elif not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string or a list of text parts", param="messages")
    out = dict(message)
    out["role"] = "system" if role == "developer" else role
    out["content"] = content
    return out


def _response_format(body: dict) -> dict | object:
    value = body.get("response_format", _MISSING)
    if value is _MISSING or value is None:
        return _MISSING
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return _MISSING
    if kind == "json_object":
        schema = value.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise InvalidRequest("'response_format.schema' must be an object", param="response_format")
        return {"type": "json_object", **({"schema": schema} if schema else {})}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be a JSON Schema object",
                                 param="response_format")
        # llama-cpp-python expresses "JSON matching this schema" as json_object + schema.
        return {"type": "json_object", "schema": schema}
    raise InvalidRequest("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                         param="response_format")


def _tools(body: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools):
            raise InvalidRequest("'tools' must be a list of {'type': 'function', 'function': {'name': ...}}",
                                 param="tools")
        for t in tools:
            t["function"].setdefault("parameters", {"type": "object", "properties": {}})
        out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
            if not isinstance(name, str):
                raise InvalidRequest("'tool_choice' must be 'none', 'auto' or {'type': 'function', "
                                     "'function': {'name': ...}}", param="tool_choice")
            if not any(t["function"]["name"] == name for t in out.get("tools", [])):
                raise InvalidRequest(f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice")
        elif choice not in ("none", "auto", "required"):
            raise InvalidRequest("'tool_choice' must be 'none', 'auto', 'required' or a function",
                                 param="tool_choice")
        out["tool_choice"] = choice
    return out


def chat_request(body: dict) -> Request:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    _only_one_choice(body)
    stream, include_usage = _stream(body)
    params: dict[str, Any] = {"messages": [_message(i, m) for i, m in enumerate(messages)]}
    params.update(sampling(body))
    params.update(_tools(body))
    for key, value in (("max_tokens", _max_tokens(body, "max_completion_tokens", "max_tokens")),
                       ("response_format", _response_format(body))):
        if value is not _MISSING:
            params[key] = value
    return Request(params, stream, include_usage)


# ---- /v1/completions and llama-server's /completion ---------------------------
def _prompt(body: dict, field: str = "prompt") -> str | list[int]:
    prompt = body.get(field, _MISSING)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise NotSupported(f"'{field}' holds several prompts; send one per request", param=field)
    raise InvalidRequest(f"'{field}' must be a string or a list of token ids", param=field)


def completion_request(body: dict) -> Request:
    _only_one_choice(body)
    stream, include_usage = _stream(body)
    params: dict[str, Any] = {"prompt": _prompt(body), **sampling(body)}
    max_tokens = _max_tokens(body, "max_tokens")
    params["max_tokens"] = 16 if max_tokens is _MISSING else max_tokens  # OpenAI's default
    if _bool(body, "echo"):
        params["echo"] = True
    suffix = body.get("suffix")
    if suffix is not None:
        raise NotSupported("'suffix' (fill-in-the-middle) is not supported", param="suffix")
    return Request(params, stream, include_usage)


def native_completion_request(body: dict) -> Request:
    """llama-server's /completion: n_predict, grammar, json_schema and friends."""
    stream = _bool(body, "stream")
    params: dict[str, Any] = {"prompt": _prompt(body), **sampling(body)}
    n_predict = _number(body, "n_predict", integer=True)
    if n_predict is not _MISSING and n_predict == 0:
        raise InvalidRequest("'n_predict' must be positive, or -1 for 'until the context is full'",
                             param="n_predict")
    # -1 (llama-server's "no limit") and absence both mean: until EOS or the context is full.
    params["max_tokens"] = n_predict if n_predict is not _MISSING and n_predict > 0 else -1
    grammar = body.get("grammar")
    schema = body.get("json_schema")
    if grammar is not None and schema is not None:
        raise InvalidRequest("send either 'grammar' or 'json_schema', not both", param="grammar")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise InvalidRequest("'grammar' must be a GBNF string", param="grammar")
        params["grammar"] = ("gbnf", grammar)
    elif schema is not None:
        if not isinstance(schema, dict):
            raise InvalidRequest("'json_schema' must be a JSON Schema object", param="json_schema")
        params["grammar"] = ("json_schema", schema)
    return Request(params, stream)


def embedding_request(body: dict) -> Request:
    value = body.get("input")
    if isinstance(value, str):
        inputs: list[str] = [value]
    elif isinstance(value, list) and value and all(isinstance(s, str) for s in value):
        inputs = value
    else:
        raise InvalidRequest("'input' must be a string or a non-empty list of strings", param="input")
    if any(not s for s in inputs):
        raise InvalidRequest("'input' must not contain empty strings", param="input")
    fmt = body.get("encoding_format", "float")
    if fmt != "float":
        raise NotSupported("only encoding_format 'float' is supported", param="encoding_format")
    return Request({"input": inputs}, stream=False)
