#!/usr/bin/env bash
# The ConvNeXt V2 / FCMAE results table, run through the real server and client:
# FCMAE-pretrained vs from-scratch fine-tuning with LABELS labels, the GRN
# ablation and the masked-convolution ablation, over SEEDS seeds.
#
# Usage: tests/bench/convnext_experiment.sh            (after deploy/build.sh)
# Knobs (environment): PRETRAIN_EPOCHS=10 PRETRAIN_IMAGES=60000 FT_EPOCHS=50
#   LABELS=1000 SEEDS="1 2" TEST_IMAGES=10000 FULL_LABELS=0 (1: also all labels)
#   ENCODER_GRN / ENCODER_NOGRN / ENCODER_NOMASK=ARTIFACT_ID: reuse an encoder that
#   an earlier run with the same WORK pretrained (its server data stays in WORK).
#   SCRATCH=0: skip the from-scratch rows (they do not depend on the pretraining
#   knobs, so a run that only varies pretraining can reuse them).
#   ABLATIONS=0: only the GRN rows (no no-GRN or no-masked-conv encoders).
#   FEW_LABELS=0: skip the LABELS-label rows (with FULL_LABELS=1: only all labels).
#   FULL_FT_EPOCHS=FT_EPOCHS: fine-tuning epochs of the all-labels rows.
#   FT_SET="field=value ...": extra spec fields for every fine-tuning row;
#   PRETRAINED_FT_SET: extra ones for the rows from an encoder (layer_decay=0.9).
# Prints a markdown table of top-1 test accuracy (mean and spread over seeds).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/env.sh
BUILD_DIR=${OFFSITE_BUILD_DIR:-build}
SERVER="$BUILD_DIR/server/offsite-server"
CLIENT="$BUILD_DIR/client/offsite"
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}
PRETRAIN_IMAGES=${PRETRAIN_IMAGES:-60000}
FT_EPOCHS=${FT_EPOCHS:-50}
LABELS=${LABELS:-1000}
SEEDS=${SEEDS:-"1 2"}
TEST_IMAGES=${TEST_IMAGES:-10000}
FULL_LABELS=${FULL_LABELS:-0}
SCRATCH=${SCRATCH:-1}
ABLATIONS=${ABLATIONS:-1}
FEW_LABELS=${FEW_LABELS:-1}
FULL_FT_EPOCHS=${FULL_FT_EPOCHS:-$FT_EPOCHS}
FT_SET=${FT_SET:-}
PRETRAINED_FT_SET=${PRETRAINED_FT_SET:-}
WORK=${WORK:-$(mktemp -d -t offsite-convnext.XXXXXX)}
mkdir -p "$WORK"
echo "work dir: $WORK (server log: $WORK/server.log)"

rm -f "$WORK/port"  # a rerun in the same WORK must not read the last server's port
"$SERVER" --listen 127.0.0.1:0 --port_file "$WORK/port" --data_dir "$WORK/data" \
  >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
trap 'kill -TERM $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "offsite-server did not start; see $WORK/server.log" >&2; exit 1; }
export OFFSITE_SERVER="127.0.0.1:$(cat "$WORK/port")" OFFSITE_CERTS_DIR="$WORK/data/certs"

# Runs one job to completion; prints its final JSON.
run() {
  local id
  id=$("$CLIENT" jobs submit "$@" | sed -n 's/^submitted \(job-[0-9a-f]*\).*/\1/p')
  "$CLIENT" jobs watch "$id" --json | tail -n 1
}
field() { sed -n "s/.*\"$1\":\([0-9.e-]*\).*/\1/p"; }
first_artifact() { sed -n 's/.*"artifact_ids":\["\([^"]*\)".*/\1/p'; }

# Pretrains one encoder variant (grn, nogrn or nomask); prints its artifact id.
pretrain() {
  local variant=$1 preset="ENCODER_${1^^}"
  if [ -n "${!preset:-}" ]; then
    echo "fcmae $variant: reusing encoder ${!preset}" >&2
    echo "${!preset}"
    return
  fi
  local json args=(--set epochs="$PRETRAIN_EPOCHS" --set data.train_subset="$PRETRAIN_IMAGES"
        --set data.test_subset=256 --set learning_rate=2e-3 --set seed=1)
  [ "$variant" = nogrn ] && args+=(--set arch.no_grn=true)
  [ "$variant" = nomask ] && args+=(--set no_masked_conv=true)
  json=$(run fcmae "${args[@]}")
  echo "fcmae $variant: loss $(field loss <<<"$json"), encoder $(first_artifact <<<"$json")" >&2
  first_artifact <<<"$json"
}

# Fine-tunes every seed of one row: label count, encoder or none, arch flags.
# Reports the test accuracy after the last epoch (no selection on the test set).
results="$WORK/results.tsv"
: >"$results"
finetune() {
  local row=$1 labels=$2 encoder=$3 epochs=$FT_EPOCHS field_value; shift 3
  [ "$labels" = 0 ] && epochs=$FULL_FT_EPOCHS
  for seed in $SEEDS; do
    args=(--set epochs="$epochs" --set label_subset="$labels" --set seed="$seed"
          --set data.test_subset="$TEST_IMAGES" "$@")
    for field_value in $FT_SET; do args+=(--set "$field_value"); done
    if [ -n "$encoder" ]; then
      args+=(--set pretrained_artifact="$encoder")
      for field_value in $PRETRAINED_FT_SET; do args+=(--set "$field_value"); done
    fi
    acc=$(run finetune "${args[@]}" | field test_accuracy)
    echo "$row	$seed	$acc" | tee -a "$results"
  done
}

# The headline comparison first, so a stopped run still has it.
encoder=$(pretrain grn)
if [ "$FEW_LABELS" = 1 ]; then
  [ "$SCRATCH" = 1 ] && finetune "scratch, GRN, $LABELS labels" "$LABELS" ""
  finetune "FCMAE, GRN, $LABELS labels" "$LABELS" "$encoder"
fi
if [ "$FULL_LABELS" = 1 ]; then
  [ "$SCRATCH" = 1 ] && finetune "scratch, GRN, all labels" 0 ""
  finetune "FCMAE, GRN, all labels" 0 "$encoder"
fi
if [ "$ABLATIONS" = 1 ] && [ "$FEW_LABELS" = 1 ]; then
  encoder=$(pretrain nogrn)
  [ "$SCRATCH" = 1 ] && finetune "scratch, no GRN, $LABELS labels" "$LABELS" "" --set arch.no_grn=true
  finetune "FCMAE, no GRN, $LABELS labels" "$LABELS" "$encoder" --set arch.no_grn=true
  encoder=$(pretrain nomask)
  finetune "FCMAE without masked conv, $LABELS labels" "$LABELS" "$encoder"
fi

echo
echo "| setting | top-1 (mean ± spread over seeds $SEEDS) | per seed |"
echo "| --- | --- | --- |"
awk -F'\t' '{n[$1]++; s[$1]+=$3; v[$1]=v[$1] " " $3; if (!($1 in mn) || $3<mn[$1]) mn[$1]=$3;
             if (!($1 in mx) || $3>mx[$1]) mx[$1]=$3; if (!($1 in order)) {order[$1]=++k; name[k]=$1}}
     END {for (i=1;i<=k;i++) {r=name[i]; printf "| %s | %.2f ± %.2f | %s |\n", r, 100*s[r]/n[r],
          50*(mx[r]-mn[r]), v[r]}}' "$results"
