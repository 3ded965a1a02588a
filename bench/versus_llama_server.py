"""furoshiki against llama.cpp's own llama-server, built from the same source with the same portable flags.

    python -m bench.versus_llama_server      # writes bench/results/versus_llama_server.json

Both serve the same synthetic llama model (~114M parameters, Q8_0) on the CPU
with 2 threads, one server at a time, alternating, over /completion with
greedy sampling and the same batch sizes and flash attention (auto).
Reported per run: generation and prompt-processing tokens/s
(each server's own `timings`) and time to first token measured by the client
on a ~530-token prompt. Ratios are furoshiki / llama-server of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import free_port, wait_healthy
from builder.native import build as native_build
from tests.tiny_gguf import TinyModelSpec, write_tiny_gguf

RESULTS = Path(__file__).parent / "results"
WORDS = "the quick brown fox jumps over the lazy dog while furoshiki wraps a gift for a friend "


def start(cmd: list[str], port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wait_healthy(proc, port)
    return proc


def completion(url: str, prompt: str, n_predict: int) -> dict:
    # Greedy, and no logit_bias: llama-cpp-python applies a bias through a Python callback per
    # token, which is worth knowing but is not the engine's speed. Both stop on the same tokens.
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "cache_prompt": False}
    r = requests.post(url + "/completion", json=body, timeout=600)
    r.raise_for_status()
    timings = r.json()["timings"]
    if n_predict > 1 and timings["predicted_n"] < n_predict // 2:
        raise RuntimeError(f"generation ended after {timings['predicted_n']} tokens; pick another prompt")
    return timings


def ttft(url: str, prompt: str) -> float:
    body = {"prompt": prompt, "n_predict": 4, "temperature": 0, "stream": True, "cache_prompt": False}
    t0 = time.perf_counter()
    with requests.post(url + "/completion", json=body, stream=True, timeout=600) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and json.loads(line[6:]).get("content"):
                return time.perf_counter() - t0
    raise RuntimeError("no token streamed")


def measure(url: str, rep: int) -> dict:
    # A different first word each time, so no server can reuse a cached prompt.
    gen = completion(url, f"{rep} Once upon a time", 128)
    pp = completion(url, f"{rep} " + WORDS * 10, 1)  # ~900 tokens: the vocabulary is near one per character
    return {"gen_tps": gen["predicted_per_second"], "pp_tps": pp["prompt_per_second"],
            "pp_tokens": pp["prompt_n"], "ttft_s": ttft(url, f"{rep}x " + WORDS * 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "versus_llama_server.json")
    args = parser.parse_args()
    native = native_build(gpu="vulkan" if os.environ.get("FUROSHIKI_VULKAN", "1") == "1" else "none",
                          log=lambda m: print(m, file=sys.stderr))
    server_dir = native / "server"
    # llama-server finds its libraries through its RUNPATH ($ORIGIN); no LD_LIBRARY_PATH, which would
    # also redirect the runtime's own libggml.
    env = {**os.environ}
    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyModelSpec(n_embd=768, n_layers=12, n_head=12, n_head_kv=12, n_ff=3072, dtype="q8_0",
                             name="bench-llama")
        model = write_tiny_gguf(Path(tmp) / "bench.gguf", spec)
        t = str(args.threads)
        commands = {
            "furoshiki": lambda p: [sys.executable, "-m", "runtime", "--model", str(model), "--port", str(p),
                                    "--threads", t, "--ctx-size", "4096", "--gpu", "cpu", "--no-browser"],
            "llama-server": lambda p: [str(server_dir / "llama-server"), "-m", str(model), "--port", str(p),
                                       "--host", "127.0.0.1", "-t", t, "-tb", t, "-c", "4096", "-np", "1",
                                       "-ngl", "0", "--no-webui"],
        }
        runs: dict[str, list] = {name: [] for name in commands}
        for rep in range(args.reps):
            order = list(commands) if rep % 2 == 0 else list(reversed(commands))
            for name in order:
                port = free_port()
                proc = start(commands[name](port), port, env)
                try:
                    completion(f"http://127.0.0.1:{port}", "warm up", 8)
                    runs[name].append(measure(f"http://127.0.0.1:{port}", rep))
                finally:
                    proc.terminate()
                    proc.wait(30)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("gen_tps", "pp_tps", "ttft_s")}
           for name, rs in runs.items()}
    ours, theirs = med["furoshiki"], med["llama-server"]
    ratios = {"generation_tps": ours["gen_tps"] / theirs["gen_tps"],
              "prompt_tps": ours["pp_tps"] / theirs["pp_tps"],
              "ttft": ours["ttft_s"] / theirs["ttft_s"]}
    results = {"command": "python -m bench.versus_llama_server " + " ".join(sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "threads": args.threads, "model": "synthetic llama 114M params, Q8_0",
               "llama_server": str(server_dir / "llama-server"), "medians": med, "ratios": ratios, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, m in med.items():
        print(f"{name:>13}: generation {m['gen_tps']:.1f} tok/s, prompt {m['pp_tps']:.1f} tok/s, "
              f"TTFT {m['ttft_s'] * 1000:.0f} ms")
    print(f"ratios furoshiki/llama-server: generation {ratios['generation_tps']:.3f}, "
          f"prompt {ratios['prompt_tps']:.3f}, TTFT {ratios['ttft']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
