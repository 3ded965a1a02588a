"""The HTTP API end to end: real waitress, real llama.cpp, tiny real model."""

from __future__ import annotations

import json

import openai

from tests.conftest import NO_EOS

HELLO = [{"role": "user", "content": "こんにちは、元気ですか？"}]


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_and_models(idle_server):
    assert idle_server.get("/health").json() == {"status": "ok"}
    models = idle_server.get("/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == "tiny-test-llama"
    assert models["data"][0]["meta"]["n_ctx"] == 4096


def test_chat_completion_reports_usage(idle_server):
    r = idle_server.post("/v1/chat/completions", {"messages": HELLO, "max_tokens": 12, "logit_bias": NO_EOS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] > len("こんにちは")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


def test_chat_stream_is_openai_sse(idle_server):
    r = idle_server.post("/v1/chat/completions", {"messages": HELLO, "max_tokens": 6, "stream": True,
                                                  "logit_bias": NO_EOS, "stream_options": {"include_usage": True}},
                         stream=True)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_openai_sdk_stream_and_non_stream(idle_server):
    client = openai.OpenAI(base_url=idle_server.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="anything", messages=HELLO, max_tokens=8, seed=7,
                                           logit_bias={4: -100})
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8
    stream = client.chat.completions.create(model="anything", messages=HELLO, max_tokens=8, seed=7,
                                            logit_bias={4: -100}, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    # Same seed, same prompt: streaming must not change what is generated.
    assert streamed == reply.choices[0].message.content
    completion = client.completions.create(model="anything", prompt="Once upon", max_tokens=5)
    assert completion.choices[0].text is not None and completion.usage.completion_tokens <= 5


def test_text_completions_stream(idle_server):
    r = idle_server.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 5, "stream": True,
                                             "logit_bias": NO_EOS}, stream=True)
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "text_completion" for e in events[:-1])


def test_json_schema_response_is_enforced_by_grammar(idle_server):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    r = idle_server.post("/v1/chat/completions", {
        "messages": HELLO, "max_tokens": 64, "temperature": 1.0, "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
    assert r.status_code == 200, r.text
    # Random weights would never produce this without the grammar.
    assert json.loads(r.json()["choices"][0]["message"]["content"])["answer"] in ("yes", "no")


def test_tool_choice_produces_a_tool_call(idle_server):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Tokyo", "Osaka"]}},
        "required": ["city"]}}}]
    r = idle_server.post("/v1/chat/completions", {
        "messages": HELLO, "max_tokens": 64, "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert r.status_code == 200, r.text
    call = r.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in ("Tokyo", "Osaka")


def test_native_completion_matches_llama_server_shape(idle_server):
    r = idle_server.post("/completion", {"prompt": "Hello", "n_predict": 7, "logit_bias": [[4, False]]})
    body = r.json()
    assert body["stop"] is True and body["tokens_predicted"] == 7 and body["stop_type"] == "limit"
    assert isinstance(body["content"], str) and body["tokens_evaluated"] > 0
    assert set(body["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"}


def test_native_completion_stop_word_and_grammar(idle_server):
    # The grammar forces the text, so the stop word is certain to appear.
    r = idle_server.post("/completion", {"prompt": "x", "n_predict": 40, "stop": ["world"],
                                         "grammar": 'root ::= "hello world and more"'})
    body = r.json()
    assert body["content"] == "hello "
    assert body["stop_type"] == "word" and body["stopping_word"] == "world"


def test_native_completion_stream_ends_with_stop_true(idle_server):
    r = idle_server.post("/completion", {"prompt": "Hello", "n_predict": 5, "stream": True,
                                         "logit_bias": {"4": -100}}, stream=True)
    events = sse_events(r)
    assert all(e["stop"] is False for e in events[:-1]) and events[:-1]
    assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 5


def test_tokenize_detokenize_round_trip(idle_server):
    text = "furoshiki で包む"
    tokens = idle_server.post("/tokenize", {"content": text}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert idle_server.post("/detokenize", {"tokens": tokens}).json()["content"].strip() == text
    pieces = idle_server.post("/tokenize", {"content": "ab", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces).strip() == "ab"


def test_props(idle_server):
    props = idle_server.get("/props").json()
    assert props["model"] == "tiny-test-llama" and props["n_ctx"] == 4096
    assert "<|im_start|>" in props["chat_template"]
    assert "llama-cpp-python 0.3.36" in props["build_info"]


def test_embeddings_refused_clearly_on_a_chat_server(idle_server):
    r = idle_server.post("/v1/embeddings", {"input": "hello"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "not_supported"
    assert "--embeddings" in r.json()["error"]["message"]


def test_chat_turn_two_reuses_the_kv_prefix(idle_server):
    history = [{"role": "system", "content": "You are helpful. " * 150},
               {"role": "user", "content": "first question"}]
    first = idle_server.post("/v1/chat/completions", {"messages": history, "max_tokens": 4,
                                                      "logit_bias": NO_EOS}).json()
    history += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                {"role": "user", "content": "second question"}]
    second = idle_server.post("/v1/chat/completions", {"messages": history, "max_tokens": 4}).json()
    t1, t2 = first["timings"], second["timings"]
    assert t1["prompt_n"] > 300
    # Only the reply and the new question are evaluated on turn 2.
    assert t2["cache_n"] >= t1["prompt_n"] - 5
    assert t2["prompt_n"] < 40
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == t2["cache_n"]


def test_max_tokens_beyond_the_context_is_clamped_not_refused(idle_server):
    r = idle_server.post("/v1/chat/completions", {"messages": HELLO, "max_tokens": 100000,
                                                  "grammar": None, "stop": [" ", "a", "e"]})
    assert r.status_code == 200, r.text


def test_embeddings_mode_returns_one_vector_per_input(tiny_model):
    from tests.conftest import live_server

    with live_server(tiny_model, embeddings=True) as srv:
        r = srv.post("/v1/embeddings", {"input": ["hello", "こんにちは世界"]})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1]
        assert all(len(d["embedding"]) == 64 for d in data)  # n_embd of the tiny model
        assert abs(sum(x * x for x in data[0]["embedding"]) - 1.0) < 1e-6
        assert data[0]["embedding"] != data[1]["embedding"]
        refused = srv.post("/v1/chat/completions", {"messages": HELLO})
        assert refused.status_code == 400 and "--embeddings" in refused.json()["error"]["message"]
