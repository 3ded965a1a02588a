"""Serving benchmarks: KV prefix reuse across chat turns, and cancel-on-disconnect delay.

    python -m bench.serving                 # writes bench/results/serving.json

It writes a synthetic llama model big enough that a token costs real time
(default ~100M parameters, Q8_0), starts `python -m runtime` as a user would,
and measures over real sockets:

* TTFT of turn 1 (long history, nothing cached) against turn 2 (same history
  plus the reply and a new question), as a ratio;
* how long the engine keeps generating after the client disconnects, in
  milliseconds and in tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import free_port, wait_healthy
from tests.tiny_gguf import TinyModelSpec, write_tiny_gguf

RESULTS = Path(__file__).parent / "results"
NO_EOS = {"4": -100}


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "--model", str(model), "--port", str(port),
                             "--threads", str(threads), "--ctx-size", "4096", "--no-browser"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_healthy(proc, port)
    return proc


def stream_chat(url: str, messages: list, max_tokens: int) -> tuple[float, str, dict]:
    """(seconds to the first content token, text, timings) for one streamed chat turn."""
    t0 = time.perf_counter()
    ttft = None
    text = []
    timings: dict = {}
    with requests.post(url + "/v1/chat/completions", stream=True, timeout=600, json={
            "messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0.7, "seed": 1,
            "logit_bias": NO_EOS, "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("timings"):
                timings = chunk["timings"]
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    ttft = ttft or time.perf_counter() - t0
                    text.append(piece)
    return ttft or float("nan"), "".join(text), timings


def kv_reuse(url: str, history_words: int, reps: int) -> dict:
    runs = []
    for rep in range(reps):
        history = [{"role": "system", "content": f"Session {rep}. " + "Keep answers short and precise. " *
                    (history_words // 5)},
                   {"role": "user", "content": "What is a furoshiki?"}]
        ttft1, reply, t1 = stream_chat(url, history, 16)
        history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And how is it folded?"}]
        ttft2, _, t2 = stream_chat(url, history, 16)
        runs.append({"turn1_ttft_ms": ttft1 * 1000, "turn2_ttft_ms": ttft2 * 1000, "ratio": ttft2 / ttft1,
                     "turn1_prompt_evaluated": t1.get("prompt_n"), "turn2_prompt_evaluated": t2.get("prompt_n"),
                     "turn2_cached": t2.get("cache_n")})
    return {"runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs)}


def disconnect_delay(url: str, port: int, reps: int) -> dict:
    # The time of one token, measured on a normal generation first.
    _, _, timings = stream_chat(url, [{"role": "user", "content": "count"}], 64)
    token_ms = timings["predicted_ms"] / max(1, timings["predicted_n"])
    runs = []
    for _ in range(reps):
        body = json.dumps({"messages": [{"role": "user", "content": "talk"}], "max_tokens": 2000, "stream": True,
                           "logit_bias": NO_EOS}).encode()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while data.count(b"\"content\"") < 10:
            data += sock.recv(65536)
        received = data.count(b"\"content\"")
        t0 = time.perf_counter()
        sock.close()
        while requests.get(url + "/slots", timeout=5).json()[0]["is_processing"]:
            time.sleep(0.001)
        delay_ms = (time.perf_counter() - t0) * 1000
        last = requests.get(url + "/slots", timeout=5).json()[0]["last"]
        runs.append({"delay_ms": delay_ms, "delay_tokens": delay_ms / token_ms, "finish": last["finish"],
                     "tokens_generated": last["usage"]["completion_tokens"], "tokens_received": received})
    return {"token_ms": token_ms, "runs": runs,
            "median_delay_ms": statistics.median(r["delay_ms"] for r in runs),
            "median_delay_tokens": statistics.median(r["delay_tokens"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--history-words", type=int, default=250)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyModelSpec(n_embd=args.embd, n_layers=args.layers, n_head=12, n_head_kv=12,
                             n_ff=4 * args.embd, dtype="q8_0", name="bench-llama")
        model = write_tiny_gguf(Path(tmp) / "bench.gguf", spec)
        port = free_port()
        proc = start_server(model, port, args.threads)
        url = f"http://127.0.0.1:{port}"
        try:
            n_params = requests.get(url + "/props", timeout=5).json()["furoshiki"]["n_params"]
            results = {
                "command": "python -m bench.serving " + " ".join(sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "model": {"n_params": n_params, "dtype": "q8_0", "file_mb": round(model.stat().st_size / 1e6, 1)},
                "threads": args.threads,
                "kv_prefix_reuse": kv_reuse(url, args.history_words, args.reps),
                "cancel_on_disconnect": disconnect_delay(url, port, args.reps * 2),
            }
        finally:
            proc.terminate()
            proc.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    kv, dc = results["kv_prefix_reuse"], results["cancel_on_disconnect"]
    print(f"model: {n_params / 1e6:.0f}M params, {args.threads} threads")
    print(f"turn-2/turn-1 TTFT: {kv['median_ratio']:.3f} (median of {args.reps}; "
          f"turn 1 {kv['runs'][0]['turn1_ttft_ms']:.0f} ms, turn 2 {kv['runs'][0]['turn2_ttft_ms']:.0f} ms)")
    print(f"disconnect -> stop: {dc['median_delay_ms']:.1f} ms = {dc['median_delay_tokens']:.2f} tokens "
          f"(one token = {dc['token_ms']:.1f} ms)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
