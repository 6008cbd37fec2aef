#!/usr/bin/env bash
# One command from a fresh clone to a trained model: installs missing packages,
# builds, starts a server with embedded defaults (fresh mTLS certificates, data
# in a temporary directory), runs the main job through the client with a live
# progress bar, downloads its artifact, prints the result and stops the server.
#
# Main job today: Forward-Forward on Fashion-MNIST (a 20k-image subset, so it
# finishes in a few minutes on two cores). Set QUICKSTART_EPOCHS etc. to change it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

deploy/build.sh
BUILD_DIR=${OFFSITE_BUILD_DIR:-build}
SERVER="$ROOT/$BUILD_DIR/server/offsite-server"
CLIENT="$ROOT/$BUILD_DIR/client/offsite"
source deploy/env.sh

WORK=$(mktemp -d -t offsite-quickstart.XXXXXX)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" && wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting offsite-server (data in $WORK/data)"
"$SERVER" --listen 127.0.0.1:0 --port_file "$WORK/port" --data_dir "$WORK/data" \
  >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  [ -s "$WORK/port" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done
[ -s "$WORK/port" ] || { echo "server did not start"; cat "$WORK/server.log"; exit 1; }
sed 's/^/   /' "$WORK/server.log"

export OFFSITE_SERVER="127.0.0.1:$(cat "$WORK/port")"
export OFFSITE_CERTS_DIR="$WORK/data/certs"   # the owner's client certificate, made on first start

echo "== submitting the Forward-Forward job (watching it live)"
"$CLIENT" jobs submit forward_forward --name quickstart \
  --set epochs="${QUICKSTART_EPOCHS:-5}" \
  --set train_subset="${QUICKSTART_TRAIN:-20000}" \
  --set layer_widths="${QUICKSTART_WIDTHS:-500,500,500}" \
  --set backprop_baseline=true --set lr_cooldown=true --set seed=1 \
  --watch | tee "$WORK/submit.out"
JOB_ID=$(sed -n 's/^submitted \(job-[0-9a-f]*\).*/\1/p' "$WORK/submit.out")

echo "== downloading the trained model"
ARTIFACT=$("$CLIENT" jobs get "$JOB_ID" --json | sed -n 's/.*"artifact_ids":\["\([^"]*\)".*/\1/p')
"$CLIENT" artifacts get "$ARTIFACT" -o "$WORK/model.pt"
echo "== done: the model artifact was downloaded and its SHA-256 verified"
