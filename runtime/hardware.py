"""Find the hardware at launch: ggml backend modules, the best CPU variant, and GPUs.

llama.cpp is built with its backends as loadable modules (GGML_BACKEND_DL):
one CPU module per x86 micro-architecture, plus GPU modules (Vulkan, CUDA,
Metal). Nothing is loaded until we ask, through ggml's C API (ctypes;
llama-cpp-python has no binding for it).

GPU drivers can hang or crash the process that touches them, so devices are
first listed by a child process with a timeout. If it fails, the server
still starts, on the CPU, and says why in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("furoshiki.hardware")

PROBE_ENV = "FUROSHIKI_PROBE_DEVICES"
# Load ggml's backend modules from this folder instead of the bundled one (diagnostics, and the
# portability test that offers only the oldest CPU variant). libggml itself stays the bundled one.
BACKEND_DIR_ENV = "FUROSHIKI_BACKEND_DIR"
PROBE_TIMEOUT = float(os.environ.get("FUROSHIKI_PROBE_TIMEOUT", "30"))
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
GPU_BACKENDS = ("cuda", "vulkan", "metal", "hip", "sycl", "opencl")
_PREFIX = "" if sys.platform == "win32" else "lib"
_SUFFIX = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")


class HardwareError(Exception):
    pass


@dataclass(frozen=True)
class Device:
    name: str                  # ggml's device name: "Vulkan0", "CUDA0", "CPU"
    description: str           # "NVIDIA GeForce RTX 4060", "llvmpipe (LLVM 15.0.6, 256 bits)"
    backend: str               # "Vulkan", "CUDA", "CPU"
    kind: str                  # cpu | gpu | igpu | accel
    free: int
    total: int


@dataclass
class Hardware:
    devices: list[Device] = field(default_factory=list)
    cpu_variant: str | None = None         # e.g. "haswell"
    cpu_variants: dict[str, int] = field(default_factory=dict)   # variant -> score (0: cannot run here)
    lib_dir: str | None = None
    probe_error: str | None = None         # why GPUs were not used, if the probe failed

    @property
    def gpus(self) -> list[Device]:
        return [d for d in self.devices if d.kind in ("gpu", "igpu")]

    def to_dict(self) -> dict:
        return asdict(self)


def lib_dir() -> Path:
    """Where libggml and the backend modules are: llama_cpp/lib (under _MEIPASS when frozen)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "llama_cpp" / "lib"
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).parent / "lib"


def backend_dir() -> Path:
    return Path(os.environ.get(BACKEND_DIR_ENV) or lib_dir())


def _ggml(directory: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(directory / f"{_PREFIX}ggml{_SUFFIX}"))
    lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_load.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_load.restype = ctypes.c_void_p
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    return lib


def cpu_variant_files(directory: Path) -> dict[str, Path]:
    prefix = f"{_PREFIX}ggml-cpu"
    found = {}
    for path in directory.glob(f"{prefix}*{_SUFFIX}"):
        stem = path.name[: -len(_SUFFIX)]
        found[stem[len(prefix) + 1:] or "default"] = path
    return found


def score_cpu_variants(directory: Path) -> dict[str, int]:
    """Each CPU module's own score for this CPU, as ggml computes it (0: it cannot run here)."""
    scores = {}
    for variant, path in sorted(cpu_variant_files(directory).items()):
        try:
            module = ctypes.CDLL(str(path))
            fn = module.ggml_backend_score
            fn.restype = ctypes.c_int
            scores[variant] = int(fn())
        except (OSError, AttributeError):
            scores[variant] = 0  # not a scoring module (a non-DL build): cannot be chosen this way
    return scores


def list_devices(lib: ctypes.CDLL) -> list[Device]:
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = lib.ggml_backend_dev_backend_reg(dev)
        devices.append(Device(
            name=(lib.ggml_backend_dev_name(dev) or b"?").decode(),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace").strip(),
            backend=(lib.ggml_backend_reg_name(reg) or b"?").decode() if reg else "?",
            kind=DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
            free=free.value, total=total.value))
    return devices


def _best(scores: dict[str, int]) -> str | None:
    runnable = {k: v for k, v in scores.items() if v > 0}
    return max(runnable, key=runnable.get) if runnable else None


def probe_here(directory: Path) -> Hardware:
    """Load every module in `directory` into this process and list the devices (used by the probe child)."""
    lib = _ggml(lib_dir())
    scores = score_cpu_variants(directory)
    lib.ggml_backend_load_all_from_path(str(directory).encode())
    return Hardware(devices=list_devices(lib), cpu_variant=_best(scores), cpu_variants=scores,
                    lib_dir=str(directory))


def probe_main() -> None:
    """Entry point of the probe child: print the hardware as JSON on stdout."""
    print(json.dumps(probe_here(backend_dir()).to_dict()))
    sys.stdout.flush()
    os._exit(0)  # skip driver teardown: some hang at exit, and the result is already out


def _probe_command() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-c", "from runtime.hardware import probe_main; probe_main()"]


def probe_in_child(timeout: float = PROBE_TIMEOUT) -> Hardware:
    env = {**os.environ, PROBE_ENV: "1"}
    try:
        proc = subprocess.run(_probe_command(), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise HardwareError(f"the GPU probe hung for {timeout:.0f} s (a GPU driver not answering)") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise HardwareError(f"the GPU probe crashed ({tail[:200]})")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise HardwareError("the GPU probe printed nothing usable") from None
    data["devices"] = [Device(**d) for d in data["devices"]]
    return Hardware(**data)


@contextlib.contextmanager
def quiet_native_output(enabled: bool = True):
    """Send what C/C++ code prints (ggml-vulkan writes to std::cerr) to /dev/null meanwhile.

    Backend modules announce themselves and their missing devices on the
    process's stdout and stderr; the user gets our one summary line instead
    (--verbose shows everything).
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


_loaded: Hardware | None = None
_lock = threading.Lock()


def load_backends(gpu: str = "auto", probe: bool = True, verbose: bool = False) -> Hardware:
    """Load the backend modules into this process, once, and return what was found.

    gpu="cpu" loads only the best CPU module. Otherwise GPU modules are loaded
    only after a child process has listed devices without crashing or hanging.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        directory = backend_dir()
        lib = _ggml(lib_dir())
        hw = Hardware(lib_dir=str(directory))
        use_gpu_modules = gpu != "cpu"
        if use_gpu_modules and probe and _has_gpu_modules(directory):
            try:
                probe_in_child()
            except HardwareError as exc:
                hw.probe_error = str(exc)
                use_gpu_modules = False
        with quiet_native_output(not verbose):
            hw.cpu_variants = score_cpu_variants(directory)
            hw.cpu_variant = _best(hw.cpu_variants)
            if use_gpu_modules or not hw.cpu_variants:
                lib.ggml_backend_load_all_from_path(str(directory).encode())
            elif hw.cpu_variant is not None:
                lib.ggml_backend_load(str(cpu_variant_files(directory)[hw.cpu_variant]).encode())
            hw.devices = list_devices(lib)
        if hw.probe_error:
            log.warning("%s; using the CPU only", hw.probe_error)
        _loaded = hw
        return hw


def _has_gpu_modules(directory: Path) -> bool:
    return any((directory / f"{_PREFIX}ggml-{name}{_SUFFIX}").exists() for name in GPU_BACKENDS)
