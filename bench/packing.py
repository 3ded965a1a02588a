"""Packing and launch benchmarks for the packed executable.

    python -m bench.packing          # writes bench/results/packing.json

* pack time of a 1 GiB GGUF against `cp` of the same file, alternated in one
  run, as a ratio of medians, to the disk (with sync) and to the page cache
  (the target is <= 1.25: the sha256 is computed in the same pass as the copy);
* time from launch to /health 200, for the packed executable and for
  `python -m runtime` on the same model (cold when the kernel lets us drop
  the page cache, warm always);
* peak RSS (VmHWM) of both after one chat request.
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

import gguf
import numpy as np
import requests

from bench.common import free_port, wait_healthy
from builder.pack import pack
from builder.stub import build_stub
from tests.tiny_gguf import TinyModelSpec, write_tiny_gguf

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent


def one_gib_gguf(path: Path) -> Path:
    """A valid GGUF holding one 1 GiB tensor of random bytes (nothing for a filesystem to shortcut)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blob", np.frombuffer(os.urandom(1 << 30), dtype=np.float32).reshape(16384, 16384))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_pack(stub: Path, work: Path, reps: int) -> dict:
    """cp against pack, alternated; each timed to the page cache and, separately, to the disk (+ sync).

    Page-cache times on a shared VM swing with the kernel's write-back state
    (both tools vary several-fold), so the durable time, which includes
    writing the gigabyte out, is the fairer measure of an I/O-bound copy.
    """
    src = one_gib_gguf(work / "big.gguf")
    size = src.stat().st_size
    ops = {"cp": lambda d: subprocess.run(["cp", str(src), str(d)], check=True),
           "pack": lambda d: pack(stub, src, d, {"name": "bench"})}
    times: dict = {f"{name}_{kind}": [] for name in ops for kind in ("cached", "durable")}
    subprocess.run(["cp", str(src), str(work / "warm")], check=True)  # the source is in the page cache for both
    for i in range(reps):
        for kind in ("cached", "durable"):
            for name, op in ops.items():
                dst = work / f"{name}{i}{kind}"
                os.sync()  # untimed: start from a clean write-back state
                t0 = time.perf_counter()
                op(dst)
                if kind == "durable":
                    os.sync()
                times[f"{name}_{kind}"].append(time.perf_counter() - t0)
                dst.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"gguf_bytes": size, "reps": reps, "seconds": times, "medians": med,
            "ratio_durable": med["pack_durable"] / med["cp_durable"],
            "ratio_cached": med["pack_cached"] / med["cp_cached"]}


def launch(cmd: list[str], env: dict) -> dict:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", str(port), "--no-browser"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, port)
    ready = time.perf_counter() - t0  # from before the process was started
    requests.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16})
    pids = [proc.pid] + [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    hwm = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm[pid] = int(line.split()[1]) * 1024
    proc.terminate()
    proc.wait(30)
    return {"ready_seconds": ready, "peak_rss_bytes": sum(hwm.values()), "processes": len(hwm)}


def bench_launch(stub: Path, work: Path, reps: int) -> dict:
    spec = TinyModelSpec(n_embd=768, n_layers=12, n_head=12, n_head_kv=12, n_ff=3072, dtype="q8_0",
                         name="bench-llama")
    model = write_tiny_gguf(work / "launch.gguf", spec)
    exe = work / "mymodel"
    pack(stub, model, exe, {"name": "mymodel"})
    env = {**os.environ, "TMPDIR": str(work)}
    packed_cmd = [str(exe)]
    source_cmd = [sys.executable, "-m", "runtime", "--model", str(model)]
    out: dict = {"model_bytes": model.stat().st_size, "cold_available": drop_caches()}
    for label, cmd in (("packed", packed_cmd), ("source", source_cmd)):
        runs = {"cold": [], "warm": []}
        for _ in range(reps):
            if out["cold_available"]:
                drop_caches()
                runs["cold"].append(launch(cmd, env))
            runs["warm"].append(launch(cmd, env))
        out[label] = {kind: {"ready_median_s": statistics.median(r["ready_seconds"] for r in rs),
                             "peak_rss_median_bytes": statistics.median(r["peak_rss_bytes"] for r in rs),
                             "runs": rs} for kind, rs in runs.items() if rs}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "packing.json")
    args = parser.parse_args()
    stub = Path(build_stub(log=lambda m: print(m, file=sys.stderr)).path)
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        work = Path(tmp)
        packing = bench_pack(stub, work, args.reps)
        launching = bench_launch(stub, work, args.reps)
    results = {"command": "python -m bench.packing " + " ".join(sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "stub_bytes": stub.stat().st_size, "pack": packing, "launch": launching}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"stub: {stub.stat().st_size / 1e6:.1f} MB")
    m = packing["medians"]
    print(f"pack 1 GiB to disk: {m['pack_durable']:.2f} s vs cp {m['cp_durable']:.2f} s -> ratio "
          f"{packing['ratio_durable']:.2f}; to page cache: {m['pack_cached']:.2f} s vs {m['cp_cached']:.2f} s -> "
          f"{packing['ratio_cached']:.2f}")
    for kind in ("cold", "warm"):
        if kind in launching["packed"]:
            p, s = launching["packed"][kind], launching["source"][kind]
            print(f"launch to /health ({kind}): packed {p['ready_median_s']:.2f} s, source "
                  f"{s['ready_median_s']:.2f} s; peak RSS packed {p['peak_rss_median_bytes'] / 2**20:.0f} MiB, "
                  f"source {s['peak_rss_median_bytes'] / 2**20:.0f} MiB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
