"""Packing and launch benchmarks for the packed executable.

    python -m bench.packing          # writes bench/results/packing.json

* pack time of a 1 GiB GGUF against `cp` of the same file, alternated in one
  run, as a ratio of medians (the target is <= 1.25: the sha256 is computed
  in the same pass as the copy);
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import requests

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
    src = one_gib_gguf(work / "big.gguf")
    size = src.stat().st_size
    cp_times, pack_times = [], []
    subprocess.run(["cp", str(src), str(work / "warm")], check=True)  # warm the page cache for both
    for i in range(reps):
        dst_cp, dst_pack = work / f"cp{i}", work / f"packed{i}"
        os.sync()  # untimed: no earlier write-back may bleed into the next measurement
        cp_times.append(timed(lambda d=dst_cp: subprocess.run(["cp", str(src), str(d)], check=True)))
        os.sync()
        pack_times.append(timed(lambda d=dst_pack: pack(stub, src, d, {"name": "bench"})))
        dst_cp.unlink()
        dst_pack.unlink()
    cp_med, pack_med = statistics.median(cp_times), statistics.median(pack_times)
    return {"gguf_bytes": size, "cp_seconds": cp_times, "pack_seconds": pack_times,
            "cp_median": cp_med, "pack_median": pack_med, "ratio": pack_med / cp_med,
            "pack_gib_per_s": size / pack_med / 2 ** 30}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], env: dict) -> dict:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", str(port), "--no-browser"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        time.sleep(0.01)
    ready = time.perf_counter() - t0
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
    parser.add_argument("--reps", type=int, default=3)
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
    print(f"pack 1 GiB: {packing['pack_median']:.2f} s vs cp {packing['cp_median']:.2f} s "
          f"-> ratio {packing['ratio']:.2f}")
    for kind in ("cold", "warm"):
        if kind in launching["packed"]:
            p, s = launching["packed"][kind], launching["source"][kind]
            print(f"launch to /health ({kind}): packed {p['ready_median_s']:.2f} s, source "
                  f"{s['ready_median_s']:.2f} s; peak RSS packed {p['peak_rss_median_bytes'] / 2**20:.0f} MiB, "
                  f"source {s['peak_rss_median_bytes'] / 2**20:.0f} MiB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
