#!/usr/bin/env bash
# One command from a fresh clone to Offsite-Tuning's whole round trip: installs
# missing packages, builds, starts a server with embedded defaults (fresh mTLS
# certificates, data in a temporary directory), then plays both parties with
# the client, each step with a live progress bar:
#   model owner: pretrains a small GPT decoder on one fortunes collection
#                ("cookie"), registers it, builds a distilled 2-2-2 emulator
#                package and grants it to the data owner "alice";
#   data owner:  pulls the package, tunes the adapter offline on its private
#                text (the "science" collection), pushes the adapter back;
#   server:      plugs the adapter into the full model and reports perplexity
#                of the plug-in next to the emulator with the same adapter.
# About ten minutes on two cores once built (9.7 min measured, most of it the
# owner's 600 pretraining steps). QUICKSTART_PRETRAIN_STEPS etc. change the sizes.
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

FORTUNES=/usr/share/games/fortunes
OWNER_TEXT=${QUICKSTART_OWNER_TEXT:-$FORTUNES/cookie}
ALICE_TEXT=${QUICKSTART_ALICE_TEXT:-$FORTUNES/science}

echo "== owner: pretraining a GPT decoder on $OWNER_TEXT"
"$CLIENT" jobs submit lm_pretrain --name quickstart-pretrain \
  --set arch.n_layer=8 --set arch.n_embd=128 --set arch.n_head=4 --set arch.n_positions=64 \
  --set data.path="$OWNER_TEXT" --set steps="${QUICKSTART_PRETRAIN_STEPS:-600}" \
  --set batch_size=32 --set learning_rate=2e-3 --set seed=1 \
  --watch | tee "$WORK/pretrain.out"
PRETRAIN_JOB=$(sed -n 's/^submitted \(job-[0-9a-f]*\).*/\1/p' "$WORK/pretrain.out")
MODEL_ARTIFACT=$("$CLIENT" jobs get "$PRETRAIN_JOB" --json | sed -n 's/.*"artifact_ids":\["\([^"]*\)".*/\1/p')

echo "== owner: registering the model and building a 2-2-2 emulator package"
"$CLIENT" models add fortune-gpt --artifact "$MODEL_ARTIFACT" --description "quickstart"
"$CLIENT" jobs submit emulator --name quickstart-emulator \
  --set model=fortune-gpt --set bottom=2 --set top=2 --set emulator_blocks=2 \
  --set distill.steps="${QUICKSTART_DISTILL_STEPS:-200}" --set distill.learning_rate=1e-3 \
  --set distill.data.text.path="$OWNER_TEXT" \
  --set task_eval.text.path="$ALICE_TEXT" --set seed=1 \
  --watch
PACKAGE=$("$CLIENT" packages list --json | sed -n 's/.*"id":"\(pkg-[0-9a-f]*\)".*/\1/p' | head -1)

echo "== owner: issuing alice a data-owner certificate and granting her $PACKAGE"
"$CLIENT" certs issue --dir "$OFFSITE_CERTS_DIR" --name alice --role data-owner
"$CLIENT" packages grant "$PACKAGE" alice

echo "== alice: pulling the package (emulator + adapter, never the full model)"
OFFSITE_IDENTITY=alice "$CLIENT" offsite pull "$PACKAGE" -o "$WORK/alice"

echo "== alice: tuning the adapter offline on her private text ($ALICE_TEXT)"
"$CLIENT" offsite tune "$WORK/alice" --data "$ALICE_TEXT" \
  --epochs "${QUICKSTART_TUNE_EPOCHS:-2}" --lr 1e-3 --seed 1

echo "== alice: pushing only the adapter; the server plugs it in and evaluates"
OFFSITE_IDENTITY=alice "$CLIENT" offsite push "$WORK/alice" --watch
echo "== done: plug-in perplexity (full model + alice's adapter) vs the emulator's above"
