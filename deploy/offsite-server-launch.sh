#!/bin/sh
# Starts offsite-server with deploy/env.sh applied: OPENBLAS_CORETYPE=SkylakeX
# only where the CPU has avx512f (OpenBLAS reads it once, at load time, so it
# must be in the environment before the process starts) and passive OpenMP
# waiting. All arguments go to offsite-server unchanged.
#
# The container's entrypoint and the systemd unit's ExecStart. It looks for
# env.sh in $OFFSITE_ENV_SH, /usr/local/lib/offsite/env.sh or next to itself,
# and runs $OFFSITE_SERVER_BIN (default: offsite-server on PATH).
set -eu
env_sh=${OFFSITE_ENV_SH:-}
if [ -z "$env_sh" ]; then
  for candidate in /usr/local/lib/offsite/env.sh "$(dirname "$0")/env.sh"; do
    if [ -r "$candidate" ]; then env_sh=$candidate; break; fi
  done
fi
if [ -z "$env_sh" ] || [ ! -r "$env_sh" ]; then
  echo "offsite-server-launch: env.sh not found (set OFFSITE_ENV_SH)" >&2
  exit 1
fi
. "$env_sh"
exec "${OFFSITE_SERVER_BIN:-offsite-server}" "$@"
