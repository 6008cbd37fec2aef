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
