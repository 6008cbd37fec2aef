# Sourced by Offsite's launch and benchmark scripts (not by tests or CI).
#
# OpenBLAS 0.3.21 does not recognise some AVX-512 CPUs and falls back to slow
# generic kernels; it reads OPENBLAS_CORETYPE once, when the library loads, so
# it must be set before the process starts. Set it only where the CPU really
# has AVX-512 (elsewhere SkylakeX kernels crash with SIGILL), and never
# override a value the user chose.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  export OPENBLAS_CORETYPE=SkylakeX
fi

# LibTorch's OpenMP threads spin while waiting by default; on a shared or
# oversubscribed machine a descheduled thread then stalls every parallel
# region (measured here: Forward-Forward steps 5-20x slower with 2 threads).
# Passive waiting costs little on a dedicated machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
