#ifndef OFFSITE_TESTS_UTIL_GRADIENT_SYNC_PROBE_H_
#define OFFSITE_TESTS_UTIL_GRADIENT_SYNC_PROBE_H_

// A GradientSync that stands in for the other ranks in trainer tests: it
// records what each call was given and answers `result`, so a test sees that
// a trainer hands over every trained parameter after backward and stops when
// the sync fails.

#include <ATen/core/Tensor.h>

#include <vector>

#include "absl/status/status.h"
#include "common/data_parallel.h"

namespace offsite::testutil {

struct GradientSyncProbe {
  absl::Status result = absl::OkStatus();
  int calls = 0;
  std::vector<at::Tensor> seen;
  bool gradients_ready = true;  // every tensor seen had a gradient

  GradientSync Sync() {
    return [this](const std::vector<at::Tensor>& parameters) {
      ++calls;
      for (const at::Tensor& p : parameters) {
        gradients_ready &= p.grad().defined();
        seen.push_back(p);
      }
      return result;
    };
  }

  // Whether every one of `parameters` was handed to a call.
  bool Saw(const std::vector<at::Tensor>& parameters) const {
    for (const at::Tensor& p : parameters) {
      bool found = false;
      for (const at::Tensor& s : seen) found |= s.is_same(p);
      if (!found) return false;
    }
    return true;
  }
};

// Copies of `parameters`, to compare after a step.
inline std::vector<at::Tensor> Copies(const std::vector<at::Tensor>& parameters) {
  std::vector<at::Tensor> copies;
  for (const at::Tensor& p : parameters) copies.push_back(p.detach().clone());
  return copies;
}

inline bool Unchanged(const std::vector<at::Tensor>& parameters,
                      const std::vector<at::Tensor>& before) {
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (!parameters[i].detach().equal(before[i])) return false;
  }
  return true;
}

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_GRADIENT_SYNC_PROBE_H_
