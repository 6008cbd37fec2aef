#!/bin/sh
# Starts offsite-worker with deploy/env.sh applied, through offsite-server-launch
# (which finds env.sh and sources it). All arguments go to offsite-worker unchanged.
#
# The worker container's command and the offsite-worker systemd unit's
# ExecStart. Runs $OFFSITE_WORKER_BIN (default: offsite-worker on PATH).
set -eu
OFFSITE_SERVER_BIN=${OFFSITE_WORKER_BIN:-offsite-worker}
export OFFSITE_SERVER_BIN
dir=$(dirname "$0")
for launcher in "$dir/offsite-server-launch" "$dir/offsite-server-launch.sh"; do
  if [ -x "$launcher" ]; then exec "$launcher" "$@"; fi
done
echo "offsite-worker-launch: no offsite-server-launch next to $0" >&2
exit 1
