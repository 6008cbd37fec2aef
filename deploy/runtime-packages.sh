#!/usr/bin/env bash
# Prints, one a line, the Debian packages that ship the shared libraries the
# given binaries load (ldd), so a runtime image installs exactly those.
# Fails naming any library that no installed package owns.
# Usage: deploy/runtime-packages.sh build/server/offsite-server build/client/offsite
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

# Each library as "LIB CANDIDATE" lines: dpkg records a file as /lib/... or
# /usr/lib/... (usrmerge), and alternatives (libblas.so.3) are symlinks to the
# real file, so try the path, the resolved path, each with and without /usr.
ldd "$@" | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  real=$(readlink -f "$lib")
  for p in "$lib" "$real"; do
    q=${p#/usr}
    printf '%s %s\n%s /usr%s\n' "$lib" "$q" "$lib" "$q"
  done
done >"${TMPDIR:-/tmp}/offsite-rp.$$"
trap 'rm -f "${TMPDIR:-/tmp}/offsite-rp.$$"' EXIT

# One pass over dpkg's file lists (dpkg-query -S per file is far too slow).
awk '
  FNR == NR { want[$2] = want[$2] " " $1; libs[$1] = 1; next }
  ($0 in want) {
    pkg = FILENAME; sub(/.*\//, "", pkg); sub(/\.list$/, "", pkg); sub(/:.*/, "", pkg)
    n = split(want[$0], owners, " ")
    for (i = 1; i <= n; i++) found[owners[i]] = pkg
  }
  END {
    bad = 0
    for (l in libs) {
      if (l in found) print found[l]
      else { print "runtime-packages: no package owns " l > "/dev/stderr"; bad = 1 }
    }
    exit bad
  }
' "${TMPDIR:-/tmp}/offsite-rp.$$" /var/lib/dpkg/info/*.list | sort -u
