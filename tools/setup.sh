#!/usr/bin/env bash
# Install hlwq's build dependencies (Debian/Ubuntu) and build it into build/.
#
#   tools/setup.sh                                  # Release build with the default compiler
#   HLWQ_CMAKE_ARGS="-DHLWQ_WERROR=ON" tools/setup.sh   # extra arguments for the configure step
#
# apt-get is skipped when every package is already installed. Also installs the npm packages of
# the tokenizer reference (tests/runtime, `npm ci`) and writes build/tokenizer_reference.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
    build-essential cmake ninja-build clang
    libxsimd-dev xtl-dev libeigen3-dev doctest-dev libbenchmark-dev doxygen
    nlohmann-json3-dev libclang-rt-14-dev libstb-dev libwebp-dev
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

# Node.js + npm run the JavaScript reference of the tokenizer/chat-template tests
# (tests/runtime/make_reference.mjs); Debian's packages unless a node/npm is already installed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    for p in nodejs npm; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
fi

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "setup: not root and no sudo; install these packages first: ${missing[*]}" >&2
            exit 1
        fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "setup: all packages already installed"
fi

# The npm packages of the tokenizer reference (pinned by tests/runtime/package-lock.json; into
# tests/runtime/node_modules, git-ignored). ctest's fixture `runtime_reference` then writes the
# reference data into <build>/tokenizer_reference (reused while its inputs are unchanged).
if [[ tests/runtime/node_modules/.package-lock.json -nt tests/runtime/package-lock.json ]]; then
    echo "setup: tests/runtime/node_modules is up to date"
else
    echo "setup: npm ci in tests/runtime (tokenizer reference)"
    (cd tests/runtime && npm ci --no-audit --no-fund --loglevel=error)
fi

read -r -a extra_args <<<"${HLWQ_CMAKE_ARGS:-}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${extra_args[@]}"
cmake --build build -j"$(nproc)"
node tests/runtime/make_reference.mjs build/tokenizer_reference
