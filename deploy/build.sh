#!/usr/bin/env bash
# Builds Offsite (Release, ccache) into build/. Installs missing Debian packages first.
# Usage: deploy/build.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh
BUILD_DIR=${OFFSITE_BUILD_DIR:-build}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Paths relative to the checkout, so another clone of the repository hits the same cache.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(pwd)}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} "$@" >/dev/null
# LibTorch translation units need ~1.5 GB each: one job per core is the most that fits comfortably.
cmake --build "$BUILD_DIR" -j "$(nproc)"
echo "build: binaries in $BUILD_DIR/server/offsite-server and $BUILD_DIR/client/offsite"
