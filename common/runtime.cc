#include "common/runtime.h"

#include <dlfcn.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"

namespace offsite {

int ConfigureThreads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  return threads;
}

std::string OpenBlasCoreName() {
  // Looked up at run time: LibTorch reaches OpenBLAS through the BLAS
  // alternative, so there is nothing to link against by name.
  using CoreNameFn = char* (*)();
  auto fn = reinterpret_cast<CoreNameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (fn == nullptr) return "unknown";
  const char* name = fn();
  return name ? name : "unknown";
}

std::string MallocName() {
  // malloc resolves to the first library in the process that defines it; ask
  // which one that is.
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&malloc), &info) != 0 && info.dli_fname != nullptr &&
      std::string(info.dli_fname).find("tcmalloc") != std::string::npos) {
    return "tcmalloc";
  }
  return "glibc";
}

std::string RuntimeSummary() {
  return absl::StrCat("torch ", TORCH_VERSION, ", ", torch::get_num_threads(),
                      " intra-op threads, OpenBLAS kernel ", OpenBlasCoreName(), ", malloc ",
                      MallocName());
}

absl::Status CheckDevice(const std::string& device) {
  try {
    torch::Device parsed(device);
    if (parsed.is_cuda() && !torch::cuda::is_available()) {
      return absl::InvalidArgumentError(
          absl::StrCat("device: \"", device, "\" but this LibTorch build has no CUDA device"));
    }
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat("device: \"", device, "\" is not a torch device (e.g. cpu, cuda:0)"));
  }
  return absl::OkStatus();
}

double PeakResidentMiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

}  // namespace offsite
