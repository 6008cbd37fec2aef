#!/usr/bin/env bash
# Installs missing dependencies, builds, and runs the whole test suite (unit and
# end-to-end). Benchmarks are built but not run: see tests/bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/build.sh
BUILD_DIR=${OFFSITE_BUILD_DIR:-build}
cd "$BUILD_DIR"
# End-to-end tests start real servers that train; running them side by side on
# a small machine only makes each slower, so unit tests run in parallel and
# the end-to-end binary on its own.
ctest --output-on-failure --timeout 1200 -j "$(nproc)" -E '^E2e|E2eTest' 
ctest --output-on-failure --timeout 1200 -R '^E2e|E2eTest'
