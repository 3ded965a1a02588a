#!/usr/bin/env bash
# Set up a development environment from nothing: system packages, a virtualenv
# in .venv, llama-cpp-python built once and cached outside the checkout, and
# furoshiki itself in editable mode with its test extras.
#
#   bash scripts/bootstrap.sh          # idempotent; fast when already done
#
# FUROSHIKI_CACHE (default ~/.cache/furoshiki) holds the built wheel, keyed by
# the llama-cpp-python version and the CMake flags, so a fresh clone on the
# same machine skips the ~8 minute compile.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
# GGML_NATIVE=OFF: never bake this machine's -march=native into the library;
# LLAVA_BUILD=OFF: multimodal is not used, and skipping it saves build time.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
CACHE="${FUROSHIKI_CACHE:-$HOME/.cache/furoshiki}"

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v ccache >/dev/null || need_apt+=(ccache)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v objcopy >/dev/null || need_apt+=(binutils)   # readelf/objcopy: stub format tests
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

key=$(printf '%s|%s|%s' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" "$(python -c 'import sys;print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
wheel_dir="$CACHE/wheels/llama-cpp-python-$key"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "bootstrap: building llama-cpp-python $LLAMA_CPP_VERSION (about 8 minutes on 2 cores, once)"
    mkdir -p "$wheel_dir.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        python -m pip wheel -q --no-deps --no-binary llama-cpp-python \
        -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
    rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
fi
python -m pip install -q "$wheel_dir"/llama_cpp_python-*.whl
python -m pip install -q -e ".[test]"
echo "bootstrap: ready (activate with: . .venv/bin/activate)"
