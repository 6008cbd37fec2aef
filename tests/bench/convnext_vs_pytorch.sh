#!/usr/bin/env bash
# ConvNeXt V2 training steps, Offsite (LibTorch C++) against PyTorch's Python
# front end on the same machine, same configuration and thread count: a
# fine-tuning step and an FCMAE step (see convnext_bench.cc).
#
# Usage: tests/bench/convnext_vs_pytorch.sh    (after deploy/build.sh)
# Knobs (environment): STEPS=10 THREADS=<all cores> ROUNDS=3 BUILD_DIR=build
# Each (side, mode) runs in its own process, ROUNDS times, alternating sides so
# that machine noise hits both; the best round of each is compared. Offsite's
# binaries run on tcmalloc; PyTorch runs as installed (glibc malloc) and, for a
# like-for-like comparison, with tcmalloc preloaded as PyTorch's CPU
# performance guide recommends.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/env.sh
BUILD_DIR=${BUILD_DIR:-build}
STEPS=${STEPS:-10}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
OURS="$BUILD_DIR/tests/convnext_bench"
THEIRS="/usr/bin/python3 tests/bench/convnext_pytorch_bench.py"
TCMALLOC=$(ldconfig -p | sed -n 's/.*libtcmalloc_minimal\.so\.4 .*=> //p' | head -n 1)
[ -n "$TCMALLOC" ] || { echo "libtcmalloc_minimal.so.4 not found; run deploy/install-deps.sh" >&2; exit 1; }

"$OURS" --mode finetune --steps 1 --threads "$THREADS" | head -n 1
rate() { sed -n "s/^$1 *\([0-9.]*\) images\/s.*/\1/p"; }
best() { sort -g | tail -n 1; }
for mode in finetune fcmae; do
  ours=() theirs=() theirs_cl=() theirs_tc=()
  for _ in $(seq "$ROUNDS"); do
    ours+=("$("$OURS" --mode "$mode" --steps "$STEPS" --threads "$THREADS" | rate "$mode")")
    theirs+=("$($THEIRS --mode "$mode" --steps "$STEPS" --threads "$THREADS" | rate "$mode")")
    theirs_cl+=("$($THEIRS --mode "$mode" --steps "$STEPS" --threads "$THREADS" --channels-last |
                  rate "$mode")")
    theirs_tc+=("$(LD_PRELOAD="$TCMALLOC" $THEIRS --mode "$mode" --steps "$STEPS" \
                   --threads "$THREADS" --channels-last | rate "$mode")")
  done
  o=$(printf '%s\n' "${ours[@]}" | best)
  t=$(printf '%s\n' "${theirs[@]}" | best)
  c=$(printf '%s\n' "${theirs_cl[@]}" | best)
  k=$(printf '%s\n' "${theirs_tc[@]}" | best)
  awk -v m="$mode" -v o="$o" -v t="$t" -v c="$c" -v k="$k" 'BEGIN {
    printf "%-9s Offsite %6.1f img/s | PyTorch %6.1f (x%.2f) | channels_last %6.1f (x%.2f)", m, o, t, o / t, c, o / c
    printf " | channels_last + tcmalloc %6.1f (x%.2f)\n", k, o / k }'
done
