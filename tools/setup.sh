#!/usr/bin/env bash
# Install hlwq's build dependencies (Debian/Ubuntu) and build it into build/.
#
#   tools/setup.sh                                  # Release build with the default compiler
#   HLWQ_CMAKE_ARGS="-DHLWQ_WERROR=ON" tools/setup.sh   # extra arguments for the configure step
#
# apt-get is skipped when every package is already installed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
    build-essential cmake ninja-build clang
    libxsimd-dev xtl-dev libeigen3-dev doctest-dev libbenchmark-dev doxygen
    nlohmann-json3-dev libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

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

read -r -a extra_args <<<"${HLWQ_CMAKE_ARGS:-}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${extra_args[@]}"
cmake --build build -j"$(nproc)"
