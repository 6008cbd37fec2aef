#ifndef OFFSITE_TESTS_UTIL_HF_CHECKPOINT_H_
#define OFFSITE_TESTS_UTIL_HF_CHECKPOINT_H_

// Small random Hugging Face GPT-2 checkpoints for tests: nothing can be
// downloaded here, so tests write their own with the real tensor names,
// shapes and config keys.
//
// Example:
//   testutil::Gpt2Sizes sizes;
//   ASSERT_TRUE(testutil::WriteGpt2CheckpointDir(dir, sizes, /*seed=*/1).ok());
//   // dir/config.json, dir/model.safetensors; add vocab.json + merges.txt
//   // (tests/util/bpe_files.h) for a tokenizer.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/safetensors.h"

namespace offsite::testutil {

struct Gpt2Sizes {
  int64_t vocab = 260;
  int64_t positions = 8;
  int64_t width = 8;
  int64_t layers = 2;
  int64_t heads = 2;
};

// config.json of GPT2LMHeadModel with these sizes (gelu_new).
std::string Gpt2ConfigJson(const Gpt2Sizes& sizes);

// GPT2Model's tensors (names without "transformer.", as the original gpt2
// files), normal(0, 0.2) from torch's generator seeded with `seed`; Conv1D
// weights in Hugging Face's (in, out) layout.
SafetensorsFile RandomGpt2Weights(const Gpt2Sizes& sizes, uint64_t seed);

// Writes dir/config.json and dir/model.safetensors (dir must exist).
absl::Status WriteGpt2CheckpointDir(const std::string& dir, const Gpt2Sizes& sizes, uint64_t seed);

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_HF_CHECKPOINT_H_
