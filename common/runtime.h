#ifndef OFFSITE_COMMON_RUNTIME_H_
#define OFFSITE_COMMON_RUNTIME_H_

// Process-wide compute settings, and the facts about them worth logging.

#include <string>

#include "absl/status/status.h"

namespace offsite {

// Sets LibTorch's intra-op threads; 0 means every core. Returns the count set.
int ConfigureThreads(int threads);

// OpenBLAS's kernel in use (e.g. "Haswell"), or "unknown" when LibTorch does
// not run on OpenBLAS. OPENBLAS_CORETYPE must be set before the process starts
// to change it; deploy/ scripts do that where the CPU has AVX-512.
std::string OpenBlasCoreName();

// "tcmalloc" when tcmalloc serves this process's malloc (every Offsite binary
// links it), otherwise "glibc".
std::string MallocName();

// One line for logs: threads, BLAS kernel, allocator, LibTorch version.
std::string RuntimeSummary();

// InvalidArgument unless `device` parses as a torch::Device usable here.
absl::Status CheckDevice(const std::string& device);

// This process's resident-set high-water mark (VmHWM) in MiB; 0 where
// /proc/self/status is not available. For benchmarks' peak-memory figures.
double PeakResidentMiB();

}  // namespace offsite

#endif  // OFFSITE_COMMON_RUNTIME_H_
