"""Build llama.cpp's libraries portably, from the source llama-cpp-python vendors, and cache them.

    python -m builder.native [--gpu none|vulkan|cuda|metal] [--print-lib-dir]

One build serves every CPU: ggml's backends are loadable modules
(GGML_BACKEND_DL) and the CPU backend comes in one module per x86
micro-architecture (GGML_CPU_ALL_VARIANTS); at launch each module scores
itself on the running CPU and the best one that can run is loaded. Never
GGML_NATIVE: that bakes the build machine's CPU into the binary.

The source is the llama-cpp-python sdist of the installed version, so the
ctypes bindings and the C ABI stay in step. The result (libllama, libggml*,
every backend module, and llama-server for benchmarks) is cached
outside the checkout, keyed by version and flags; ccache speeds rebuilds.
The layout is lib/ (what the runtime loads) and server/ (llama-server and the
libraries it links, for benchmarks against the same source).

Vulkan: Debian bookworm's Vulkan headers (1.3.239) are too old for the
vendored ggml-vulkan (vk::LayerSettingEXT), so trixie's libvulkan-dev and
spirv-headers are downloaded with apt into a private state and unpacked
into a private prefix; bookworm's glslc and libvulkan1 are used as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from builder.stub import cache_root
from runtime.errors import FuroshikiError

BASE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",      # llama-server from the same source, for the benchmarks
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # never download at build time
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
]
TRIXIE_VULKAN_DEBS = ("libvulkan-dev", "spirv-headers")
GPU_FLAGS = {"none": [], "vulkan": ["-DGGML_VULKAN=ON"], "cuda": ["-DGGML_CUDA=ON"], "metal": ["-DGGML_METAL=ON"]}


class NativeBuildError(FuroshikiError):
    pass


def llama_cpp_python_version() -> str:
    from importlib.metadata import version

    return version("llama_cpp_python")


def source_dir(version: str) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist, downloaded once from PyPI."""
    root = cache_root() / "src" / f"llama_cpp_python-{version}"
    vendored = root / "vendor" / "llama.cpp"
    if (vendored / "CMakeLists.txt").is_file():
        return vendored
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(root.parent, filter="data")
    if not (vendored / "CMakeLists.txt").is_file():
        raise NativeBuildError(f"the llama-cpp-python {version} sdist has no vendor/llama.cpp")
    return vendored


def vulkan_prefix() -> Path:
    """Trixie's Vulkan headers unpacked into a private prefix (nothing is installed system-wide)."""
    prefix = cache_root() / "vulkan-trixie"
    if (prefix / "usr" / "include" / "vulkan" / "vulkan.hpp").is_file():
        return prefix
    if not shutil.which("glslc"):
        raise NativeBuildError("Vulkan needs glslc: apt-get install glslc libvulkan1")
    state = Path(tempfile.mkdtemp(prefix="furoshiki-apt-"))
    (state / "lists" / "partial").mkdir(parents=True)
    (state / "debs").mkdir()
    (state / "sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    opts = [f"-oDir::Etc::SourceList={state / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={state / 'lists'}", "-oAPT::Get::List-Cleanup=0"]
    subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
    subprocess.run(["apt-get", *opts, "-qq", "download", *TRIXIE_VULKAN_DEBS], check=True, cwd=state / "debs")
    prefix.mkdir(parents=True, exist_ok=True)
    for deb in (state / "debs").glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(prefix)], check=True)
    shutil.rmtree(state, ignore_errors=True)
    return prefix


def _is_library(path: Path) -> bool:
    return path.suffix in (".dll", ".dylib") or ".so" in path.name


def _copy_outputs(built: Path, out: Path) -> None:
    """lib/: only what the runtime loads, as real files. server/: llama-server with all it links."""
    (out / "lib").mkdir(parents=True)
    (out / "server").mkdir()
    for path in built.iterdir():
        if _is_library(path) or path.name.startswith("llama-server"):
            shutil.copy2(path, out / "server" / path.name, follow_symlinks=False)
    if sys.platform.startswith("linux"):
        # llama_cpp opens libllama.so and libggml.so; they need libggml.so.0 and libggml-base.so.0;
        # every backend module (libggml-cpu-haswell.so, libggml-vulkan.so, ...) is found by ggml.
        wanted = {"libllama.so", "libggml.so", "libggml.so.0", "libggml-base.so", "libggml-base.so.0"}
        wanted |= {p.name for p in built.glob("libggml-*.so") if p.name != "libggml-base.so"}
    else:
        wanted = {p.name for p in built.iterdir() if _is_library(p)}
    for name in sorted(wanted):
        # Keep symlink chains (libggml.so -> libggml.so.0 -> libggml.so.0.25.3) as links: two
        # copies of one library would be loaded twice, each with its own backend registry.
        path = built / name
        while path.exists():
            target = out / "lib" / path.name
            if not target.exists() and not target.is_symlink():
                shutil.copy2(path, target, follow_symlinks=False)
            if not path.is_symlink():
                break
            path = built / os.readlink(path)


def build_key(version: str, flags: list[str]) -> str:
    cc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return hashlib.sha256(json.dumps([version, flags, cc]).encode()).hexdigest()[:16]


def build(gpu: str = "none", jobs: int | None = None, log=print) -> Path:
    """Return the folder holding lib/ and server/ of the portable build, building it if needed."""
    version = llama_cpp_python_version()
    flags = list(BASE_FLAGS) + GPU_FLAGS[gpu]
    vulkan = gpu == "vulkan" and sys.platform.startswith("linux")
    key = build_key(version, flags)
    out = cache_root() / "native" / f"{version}-{'cpu' if gpu == 'none' else gpu}-{key}"
    if (out / "native.json").is_file():
        return out
    src = source_dir(version)
    extra = []
    if vulkan:
        prefix = vulkan_prefix()
        loaders = sorted(Path("/usr/lib").glob("*/libvulkan.so.1")) + sorted(Path("/usr/lib").glob("libvulkan.so.1"))
        if not loaders:
            raise NativeBuildError("Vulkan needs the system's loader: apt-get install libvulkan1")
        # trixie's libvulkan.so is a symlink to a loader we did not unpack: link bookworm's instead.
        extra = [f"-DVulkan_INCLUDE_DIR={prefix / 'usr' / 'include'}", f"-DCMAKE_PREFIX_PATH={prefix / 'usr'}",
                 f"-DVulkan_LIBRARY={loaders[0]}"]
    build_dir = cache_root() / "native-build" / key
    jobs = jobs or os.cpu_count() or 2
    log(f"building llama.cpp (llama-cpp-python {version}) with every CPU variant"
        f"{'' if gpu == 'none' else ' and ' + gpu}: 12-30 minutes on 2 cores, once")
    t0 = time.perf_counter()
    subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), *flags, *extra], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs),
                    "--target", "llama", "ggml", "llama-server"], check=True)
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    # Single-config generators put outputs in bin/, multi-config ones (MSVC) in bin/Release/.
    built = build_dir / "bin" / "Release" if (build_dir / "bin" / "Release").is_dir() else build_dir / "bin"
    _copy_outputs(built, tmp_out)
    modules = sorted(p.name for p in (tmp_out / "lib").iterdir() if "ggml-" in p.name and "base" not in p.name)
    meta = {"llama_cpp_python": version, "flags": flags, "gpu": gpu, "modules": modules,
            "build_seconds": round(time.perf_counter() - t0), "key": key}
    (tmp_out / "native.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    log(f"portable llama.cpp ready in {out} ({meta['build_seconds']} s): {', '.join(modules)}")
    log(f"llama-server from the same source: {out / 'server' / 'llama-server'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build llama.cpp's libraries portably (cached).")
    parser.add_argument("--gpu", choices=sorted(GPU_FLAGS), default="none",
                        help="GPU backend module to build besides the CPU variants")
    parser.add_argument("--print-lib-dir", action="store_true", help="print only the lib/ folder")
    args = parser.parse_args()
    try:
        out = build(gpu=args.gpu, log=lambda m: print(m, file=sys.stderr))
    except (FuroshikiError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(out / "lib" if args.print_lib_dir else out)


if __name__ == "__main__":
    main()
