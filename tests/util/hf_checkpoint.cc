#include "tests/util/hf_checkpoint.h"

#include <torch/torch.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace offsite::testutil {

std::string Gpt2ConfigJson(const Gpt2Sizes& sizes) {
  return absl::StrCat(R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], )",
                      R"("vocab_size": )", sizes.vocab, R"(, "n_positions": )", sizes.positions,
                      R"(, "n_embd": )", sizes.width, R"(, "n_layer": )", sizes.layers,
                      R"(, "n_head": )", sizes.heads, R"(, "activation_function": "gelu_new"})");
}

SafetensorsFile RandomGpt2Weights(const Gpt2Sizes& sizes, uint64_t seed) {
  torch::manual_seed(seed);
  SafetensorsFile file;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    file.tensors.push_back({name, torch::randn(shape) * 0.2});
  };
  const int64_t c = sizes.width;
  add("wte.weight", {sizes.vocab, c});
  add("wpe.weight", {sizes.positions, c});
  for (int64_t i = 0; i < sizes.layers; ++i) {
    const std::string h = absl::StrCat("h.", i, ".");
    for (const char* norm : {"ln_1", "ln_2"}) {
      add(absl::StrCat(h, norm, ".weight"), {c});
      add(absl::StrCat(h, norm, ".bias"), {c});
    }
    add(h + "attn.c_attn.weight", {c, 3 * c});
    add(h + "attn.c_attn.bias", {3 * c});
    add(h + "attn.c_proj.weight", {c, c});
    add(h + "attn.c_proj.bias", {c});
    add(h + "mlp.c_fc.weight", {c, 4 * c});
    add(h + "mlp.c_fc.bias", {4 * c});
    add(h + "mlp.c_proj.weight", {4 * c, c});
    add(h + "mlp.c_proj.bias", {c});
  }
  add("ln_f.weight", {c});
  add("ln_f.bias", {c});
  return file;
}

absl::Status WriteGpt2CheckpointDir(const std::string& dir, const Gpt2Sizes& sizes,
                                    uint64_t seed) {
  OFFSITE_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, "config.json"), Gpt2ConfigJson(sizes)));
  return WriteSafetensors(JoinPath(dir, "model.safetensors"), RandomGpt2Weights(sizes, seed));
}

}  // namespace offsite::testutil
