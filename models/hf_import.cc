#include "models/hf_import.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "models/block_model.h"
#include "models/gpt.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"

namespace offsite {
namespace {

using Json = nlohmann::json;

// Names listed per kind of problem before "and N more".
constexpr size_t kMaxListed = 8;

std::string ShapeText(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string Listed(const std::vector<std::string>& items) {
  const size_t shown = std::min(items.size(), kMaxListed);
  std::string text = absl::StrJoin(items.begin(), items.begin() + shown, ", ");
  if (items.size() > shown) absl::StrAppend(&text, " and ", items.size() - shown, " more");
  return text;
}

// config.json, read with Hugging Face's class defaults for absent (or null)
// keys, as `transformers` does.
class HfConfig {
 public:
  static absl::StatusOr<HfConfig> Parse(const std::string& text) {
    HfConfig config;
    try {
      config.json_ = Json::parse(text);
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("config.json is not valid JSON: ", e.what()));
    }
    if (!config.json_.is_object()) {
      return absl::InvalidArgumentError("config.json is not a JSON object");
    }
    return config;
  }

  bool Has(const std::string& key) const {
    auto it = json_.find(key);
    return it != json_.end() && !it->is_null();
  }

  absl::StatusOr<int64_t> Int(const std::string& key, int64_t fallback) const {
    if (!Has(key)) return fallback;
    const Json& value = json_.at(key);
    if (!value.is_number_integer()) return TypeError(key, "an integer");
    return value.get<int64_t>();
  }

  absl::StatusOr<double> Double(const std::string& key, double fallback) const {
    if (!Has(key)) return fallback;
    const Json& value = json_.at(key);
    if (!value.is_number()) return TypeError(key, "a number");
    return value.get<double>();
  }

  absl::StatusOr<bool> Bool(const std::string& key, bool fallback) const {
    if (!Has(key)) return fallback;
    const Json& value = json_.at(key);
    if (!value.is_boolean()) return TypeError(key, "true or false");
    return value.get<bool>();
  }

  absl::StatusOr<std::string> String(const std::string& key, const std::string& fallback) const {
    if (!Has(key)) return fallback;
    const Json& value = json_.at(key);
    if (!value.is_string()) return TypeError(key, "a string");
    return value.get<std::string>();
  }

  absl::StatusOr<std::vector<int64_t>> IntList(const std::string& key,
                                               std::vector<int64_t> fallback) const {
    if (!Has(key)) return fallback;
    const Json& value = json_.at(key);
    if (!value.is_array()) return TypeError(key, "a list of integers");
    std::vector<int64_t> out;
    for (const Json& item : value) {
      if (!item.is_number_integer()) return TypeError(key, "a list of integers");
      out.push_back(item.get<int64_t>());
    }
    return out;
  }

  // Hugging Face's num_labels: the size of id2label, else "num_labels", else 2.
  absl::StatusOr<int64_t> NumLabels() const {
    if (Has("id2label")) {
      const Json& value = json_.at("id2label");
      if (!value.is_object()) return TypeError("id2label", "an object");
      return static_cast<int64_t>(value.size());
    }
    return Int("num_labels", 2);
  }

 private:
  absl::Status TypeError(const std::string& key, const std::string& expected) const {
    return absl::InvalidArgumentError(absl::StrCat("config.json: \"", key, "\" must be ", expected,
                                                   ", got ", json_.at(key).dump()));
  }

  Json json_;
};

absl::Status Unsupported(HfFamily family, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat(HfFamilyName(family), " checkpoint: ", what, " is not supported by Offsite"));
}

// model_type, when config.json has one, must be the family's.
absl::Status CheckModelType(const HfConfig& config, HfFamily family) {
  OFFSITE_ASSIGN_OR_RETURN(std::string type, config.String("model_type", ""));
  const std::string expected = HfFamilyName(family);
  if (!type.empty() && type != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json has model_type \"", type, "\", not \"", expected, "\""));
  }
  return absl::OkStatus();
}

absl::Status CheckInt32(const std::string& key, int64_t value) {
  if (value <= 0 || value > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: \"", key, "\" must be a positive 32-bit integer, got ", value));
  }
  return absl::OkStatus();
}

// Hugging Face activation names onto GptConfig::activation.
absl::StatusOr<std::string> GptActivation(HfFamily family, const std::string& name) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return std::string("gelu_new");
  if (name == "gelu" || name == "relu") return name;
  return Unsupported(family, absl::StrCat("activation_function \"", name, "\""));
}

// --- The mapping --------------------------------------------------------------

// How one Offsite tensor is made from Hugging Face tensors.
enum class Op {
  kCopy,        // As is.
  kTranspose,   // Conv1D (in, out) -> Linear (out, in).
  kConcatRows,  // q, k, v projections -> c_attn.
  kDropRows,    // OPT positions: drop the first `drop_rows` rows.
};

struct Source {
  std::string name;  // Hugging Face name, without the model prefix.
  std::vector<int64_t> shape;
};

struct Target {
  std::string name;  // Offsite's name.
  Op op;
  std::vector<Source> sources;
  int64_t drop_rows = 0;
};

struct Plan {
  // Prefix the checkpoint may put before every name but `top_level` ones
  // ("transformer.", "model.", "convnextv2."); names below are without it.
  std::string prefix;
  std::vector<std::string> top_level;  // Prefixes of names never prefixed.
  std::vector<Target> targets;
  std::set<std::string> skipped;  // Non-parameter buffers.
  // An output embedding that, if present, must equal `tied_to` (tied weights).
  std::string tied_head;
  std::string tied_to;

  void Copy(const std::string& to, const std::string& from, std::vector<int64_t> shape) {
    targets.push_back({to, Op::kCopy, {{from, std::move(shape)}}});
  }
  void Transpose(const std::string& to, const std::string& from, std::vector<int64_t> shape) {
    targets.push_back({to, Op::kTranspose, {{from, std::move(shape)}}});
  }
  // weight and bias of a LayerNorm, or of a Linear of shape (out, in).
  void Norm(const std::string& to, const std::string& from, int64_t dim) {
    Copy(to + ".weight", from + ".weight", {dim});
    Copy(to + ".bias", from + ".bias", {dim});
  }
  void Linear(const std::string& to, const std::string& from, int64_t out, int64_t in) {
    Copy(to + ".weight", from + ".weight", {out, in});
    Copy(to + ".bias", from + ".bias", {out});
  }
  bool IsTopLevel(const std::string& name) const {
    for (const std::string& p : top_level) {
      if (absl::StartsWith(name, p)) return true;
    }
    return false;
  }
};

Plan Gpt2Plan(int64_t vocab, int64_t positions, int64_t c, int64_t layers) {
  Plan plan;
  plan.prefix = "transformer.";
  plan.top_level = {"lm_head."};
  plan.Copy("wte.weight", "wte.weight", {vocab, c});
  plan.Copy("wpe.weight", "wpe.weight", {positions, c});
  for (int64_t i = 0; i < layers; ++i) {
    const std::string h = absl::StrCat("h.", i, ".");
    plan.Norm(h + "ln_1", h + "ln_1", c);
    plan.Transpose(h + "attn.c_attn.weight", h + "attn.c_attn.weight", {c, 3 * c});
    plan.Copy(h + "attn.c_attn.bias", h + "attn.c_attn.bias", {3 * c});
    plan.Transpose(h + "attn.c_proj.weight", h + "attn.c_proj.weight", {c, c});
    plan.Copy(h + "attn.c_proj.bias", h + "attn.c_proj.bias", {c});
    plan.Norm(h + "ln_2", h + "ln_2", c);
    plan.Transpose(h + "mlp.c_fc.weight", h + "mlp.c_fc.weight", {c, 4 * c});
    plan.Copy(h + "mlp.c_fc.bias", h + "mlp.c_fc.bias", {4 * c});
    plan.Transpose(h + "mlp.c_proj.weight", h + "mlp.c_proj.weight", {4 * c, c});
    plan.Copy(h + "mlp.c_proj.bias", h + "mlp.c_proj.bias", {c});
    plan.skipped.insert(h + "attn.bias");
    plan.skipped.insert(h + "attn.masked_bias");
  }
  plan.Norm("ln_f", "ln_f", c);
  plan.tied_head = "lm_head.weight";
  plan.tied_to = "wte.weight";
  return plan;
}

// OPT's learned positions start at row 2 (fairseq's padding offset).
constexpr int64_t kOptPositionOffset = 2;

// `embed` is word_embed_proj_dim: when it differs from c the embeddings are
// projected in and out (OPT-350m); `final_norm` whether the decoder has one.
Plan OptPlan(int64_t vocab, int64_t positions, int64_t c, int64_t layers, int64_t embed,
             bool final_norm) {
  Plan plan;
  plan.prefix = "model.";
  plan.top_level = {"lm_head."};
  plan.Copy("wte.weight", "decoder.embed_tokens.weight", {vocab, embed});
  if (embed != c) {
    plan.Copy("project_in.weight", "decoder.project_in.weight", {c, embed});
    plan.Copy("project_out.weight", "decoder.project_out.weight", {embed, c});
  }
  plan.targets.push_back({"wpe.weight",
                          Op::kDropRows,
                          {{"decoder.embed_positions.weight", {positions + kOptPositionOffset, c}}},
                          kOptPositionOffset});
  for (int64_t i = 0; i < layers; ++i) {
    const std::string h = absl::StrCat("h.", i, ".");
    const std::string l = absl::StrCat("decoder.layers.", i, ".");
    plan.Norm(h + "ln_1", l + "self_attn_layer_norm", c);
    // GptAttention splits c_attn's output into q, k, v in that order.
    for (const char* part : {"weight", "bias"}) {
      std::vector<Source> sources;
      for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
        std::vector<int64_t> shape = {c};
        if (std::string(part) == "weight") shape.push_back(c);
        sources.push_back({absl::StrCat(l, "self_attn.", proj, ".", part), shape});
      }
      plan.targets.push_back({absl::StrCat(h, "attn.c_attn.", part), Op::kConcatRows, sources});
    }
    plan.Linear(h + "attn.c_proj", l + "self_attn.out_proj", c, c);
    plan.Norm(h + "ln_2", l + "final_layer_norm", c);
    plan.Linear(h + "mlp.c_fc", l + "fc1", 4 * c, c);
    plan.Linear(h + "mlp.c_proj", l + "fc2", c, 4 * c);
  }
  if (final_norm) plan.Norm("ln_f", "decoder.final_layer_norm", c);
  plan.tied_head = "lm_head.weight";
  plan.tied_to = "decoder.embed_tokens.weight";
  return plan;
}

Plan ConvNextV2Plan(int64_t in_channels, int64_t patch, const std::vector<int64_t>& depths,
                    const std::vector<int64_t>& dims, int64_t classes) {
  Plan plan;
  plan.prefix = "convnextv2.";
  plan.top_level = {"classifier."};
  plan.Copy("downsample_layers.0.0.weight", "embeddings.patch_embeddings.weight",
            {dims[0], in_channels, patch, patch});
  plan.Copy("downsample_layers.0.0.bias", "embeddings.patch_embeddings.bias", {dims[0]});
  plan.Norm("downsample_layers.0.1", "embeddings.layernorm", dims[0]);
  int64_t k = 0;  // Offsite numbers blocks across stages.
  for (size_t s = 0; s < depths.size(); ++s) {
    const std::string stage = absl::StrCat("encoder.stages.", s, ".");
    const int64_t d = dims[s];
    if (s > 0) {
      const std::string down = absl::StrCat("downsample_layers.", s, ".");
      plan.Norm(down + "0", stage + "downsampling_layer.0", dims[s - 1]);
      plan.Copy(down + "1.weight", stage + "downsampling_layer.1.weight", {d, dims[s - 1], 2, 2});
      plan.Copy(down + "1.bias", stage + "downsampling_layer.1.bias", {d});
    }
    for (int64_t m = 0; m < depths[s]; ++m, ++k) {
      const std::string b = absl::StrCat("blocks.", k, ".");
      const std::string l = absl::StrCat(stage, "layers.", m, ".");
      plan.Copy(b + "dwconv.weight", l + "dwconv.weight", {d, 1, 7, 7});
      plan.Copy(b + "dwconv.bias", l + "dwconv.bias", {d});
      plan.Norm(b + "norm", l + "layernorm", d);
      plan.Linear(b + "pwconv1", l + "pwconv1", 4 * d, d);
      plan.Copy(b + "grn.gamma", l + "grn.weight", {1, 1, 1, 4 * d});
      plan.Copy(b + "grn.beta", l + "grn.bias", {1, 1, 1, 4 * d});
      plan.Linear(b + "pwconv2", l + "pwconv2", d, 4 * d);
    }
  }
  plan.Norm("norm", "layernorm", dims.back());
  plan.Linear("head", "classifier", classes, dims.back());
  return plan;
}

// Checks the checkpoint against `plan` and builds Offsite's tensors.
absl::StatusOr<std::vector<NamedTensor>> ApplyPlan(const Plan& plan, HfFamily family,
                                                   const SafetensorsFile& weights) {
  std::map<std::string, torch::Tensor> by_name;  // Without the prefix.
  std::map<std::string, std::string> original;
  bool prefixed = false;
  std::vector<std::string> duplicates;
  std::vector<std::string> bad_dtypes;
  for (const NamedTensor& t : weights.tensors) {
    std::string name = t.name;
    if (absl::StartsWith(name, plan.prefix)) {
      name = name.substr(plan.prefix.size());
      prefixed = true;
    }
    if (by_name.count(name)) {
      duplicates.push_back(absl::StrCat(t.name, " (also as ", original[name], ")"));
      continue;
    }
    const c10::ScalarType type = t.tensor.scalar_type();
    if (type != torch::kFloat && type != torch::kHalf && type != torch::kBFloat16) {
      bad_dtypes.push_back(absl::StrCat(t.name, " (", SafetensorsDtypeName(type), ")"));
    }
    by_name[name] = t.tensor;
    original[name] = t.name;
  }
  auto shown = [&](const std::string& name) {
    return prefixed && !plan.IsTopLevel(name) ? plan.prefix + name : name;
  };

  std::set<std::string> expected;
  std::vector<std::string> missing;
  std::vector<std::string> bad_shapes;
  for (const Target& target : plan.targets) {
    for (const Source& source : target.sources) {
      expected.insert(source.name);
      auto it = by_name.find(source.name);
      if (it == by_name.end()) {
        missing.push_back(shown(source.name));
      } else if (it->second.sizes() != c10::IntArrayRef(source.shape)) {
        bad_shapes.push_back(absl::StrCat(original[source.name], " is ",
                                          ShapeText(it->second.sizes()), ", config.json implies ",
                                          ShapeText(source.shape)));
      }
    }
  }
  std::vector<std::string> unknown;
  for (const auto& [name, tensor] : by_name) {
    if (!expected.count(name) && !plan.skipped.count(name) && name != plan.tied_head) {
      unknown.push_back(original[name]);
    }
  }
  std::vector<std::string> problems;
  auto add = [&](const std::vector<std::string>& items, const std::string& what) {
    if (items.empty()) return;
    problems.push_back(absl::StrCat(items.size(), " ", what, ": ", Listed(items)));
  };
  add(missing, "missing tensor(s)");
  add(unknown, "unknown tensor(s)");
  add(bad_shapes, "tensor(s) of the wrong shape");
  add(bad_dtypes, "tensor(s) not F32, F16 or BF16");
  add(duplicates, "duplicate tensor(s)");
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        HfFamilyName(family),
        " checkpoint does not match its config.json: ", absl::StrJoin(problems, "; ")));
  }

  torch::NoGradGuard no_grad;
  auto as_float = [&](const std::string& name) { return by_name.at(name).to(torch::kFloat); };
  if (!plan.tied_head.empty() && by_name.count(plan.tied_head)) {
    const torch::Tensor head = as_float(plan.tied_head);
    const torch::Tensor embedding = as_float(plan.tied_to);
    if (!head.sizes().equals(embedding.sizes()) || !torch::equal(head, embedding)) {
      return Unsupported(
          family, absl::StrCat(original[plan.tied_head], " differs from ", original[plan.tied_to],
                               ": an untied output embedding"));
    }
  }
  std::vector<NamedTensor> out;
  for (const Target& target : plan.targets) {
    torch::Tensor value;
    switch (target.op) {
      case Op::kCopy:
        value = as_float(target.sources[0].name);
        break;
      case Op::kTranspose:
        value = as_float(target.sources[0].name).t();
        break;
      case Op::kDropRows:
        value = as_float(target.sources[0].name).slice(0, target.drop_rows);
        break;
      case Op::kConcatRows: {
        std::vector<torch::Tensor> parts;
        for (const Source& source : target.sources) parts.push_back(as_float(source.name));
        value = torch::cat(parts, 0);
        break;
      }
    }
    out.push_back({target.name, value.contiguous()});
  }
  return out;
}

// --- Families -----------------------------------------------------------------

struct FamilyImport {
  v1::ModelArch arch;
  Plan plan;
};

// The GptArch of sizes read from a config: vocabulary, positions, width,
// layers and heads, each with its config key for errors. The default
// activation stays implicit, so the arch reads as any Offsite GPT's.
absl::StatusOr<v1::GptArch> GptArchOf(const std::array<std::pair<const char*, int64_t>, 5>& sizes,
                                      const std::string& activation) {
  for (const auto& [key, value] : sizes) OFFSITE_RETURN_IF_ERROR(CheckInt32(key, value));
  v1::GptArch gpt;
  gpt.set_vocab_size(static_cast<int32_t>(sizes[0].second));
  gpt.set_n_positions(static_cast<int32_t>(sizes[1].second));
  gpt.set_n_embd(static_cast<int32_t>(sizes[2].second));
  gpt.set_n_layer(static_cast<int32_t>(sizes[3].second));
  gpt.set_n_head(static_cast<int32_t>(sizes[4].second));
  if (activation != GptConfig().activation) gpt.set_activation(activation);
  return gpt;
}

absl::StatusOr<FamilyImport> Gpt2Import(const HfConfig& config) {
  const HfFamily family = HfFamily::kGpt2;
  OFFSITE_RETURN_IF_ERROR(CheckModelType(config, family));
  OFFSITE_ASSIGN_OR_RETURN(int64_t vocab, config.Int("vocab_size", 50257));
  OFFSITE_ASSIGN_OR_RETURN(int64_t n_ctx, config.Int("n_ctx", 1024));
  OFFSITE_ASSIGN_OR_RETURN(int64_t positions, config.Int("n_positions", n_ctx));
  OFFSITE_ASSIGN_OR_RETURN(int64_t c, config.Int("n_embd", 768));
  OFFSITE_ASSIGN_OR_RETURN(int64_t layers, config.Int("n_layer", 12));
  OFFSITE_ASSIGN_OR_RETURN(int64_t heads, config.Int("n_head", 12));
  OFFSITE_ASSIGN_OR_RETURN(double eps, config.Double("layer_norm_epsilon", 1e-5));
  OFFSITE_ASSIGN_OR_RETURN(std::string act, config.String("activation_function", "gelu_new"));
  OFFSITE_ASSIGN_OR_RETURN(bool scale, config.Bool("scale_attn_weights", true));
  OFFSITE_ASSIGN_OR_RETURN(bool by_layer, config.Bool("scale_attn_by_inverse_layer_idx", false));
  OFFSITE_ASSIGN_OR_RETURN(bool cross, config.Bool("add_cross_attention", false));
  if (config.Has("n_inner")) {
    OFFSITE_ASSIGN_OR_RETURN(int64_t inner, config.Int("n_inner", 4 * c));
    if (inner != 4 * c) {
      return Unsupported(
          family,
          absl::StrCat("n_inner ", inner, " (an MLP width other than 4 * n_embd = ", 4 * c, ")"));
    }
  }
  if (std::abs(eps - 1e-5) > 1e-12) {
    return Unsupported(family,
                       absl::StrCat("layer_norm_epsilon ", eps, " (Offsite's GPT uses 1e-5)"));
  }
  if (!scale) return Unsupported(family, "scale_attn_weights false");
  if (by_layer) return Unsupported(family, "scale_attn_by_inverse_layer_idx true");
  if (cross) return Unsupported(family, "add_cross_attention true");
  OFFSITE_ASSIGN_OR_RETURN(std::string activation, GptActivation(family, act));
  FamilyImport out;
  OFFSITE_ASSIGN_OR_RETURN(*out.arch.mutable_gpt(), GptArchOf({{{"vocab_size", vocab},
                                                                {"n_positions", positions},
                                                                {"n_embd", c},
                                                                {"n_layer", layers},
                                                                {"n_head", heads}}},
                                                              activation));
  out.plan = Gpt2Plan(vocab, positions, c, layers);
  return out;
}

absl::StatusOr<FamilyImport> OptImport(const HfConfig& config) {
  const HfFamily family = HfFamily::kOpt;
  OFFSITE_RETURN_IF_ERROR(CheckModelType(config, family));
  OFFSITE_ASSIGN_OR_RETURN(int64_t vocab, config.Int("vocab_size", 50272));
  OFFSITE_ASSIGN_OR_RETURN(int64_t c, config.Int("hidden_size", 768));
  OFFSITE_ASSIGN_OR_RETURN(int64_t layers, config.Int("num_hidden_layers", 12));
  OFFSITE_ASSIGN_OR_RETURN(int64_t heads, config.Int("num_attention_heads", 12));
  OFFSITE_ASSIGN_OR_RETURN(int64_t ffn, config.Int("ffn_dim", 3072));
  OFFSITE_ASSIGN_OR_RETURN(int64_t positions, config.Int("max_position_embeddings", 2048));
  OFFSITE_ASSIGN_OR_RETURN(int64_t proj_dim, config.Int("word_embed_proj_dim", c));
  OFFSITE_ASSIGN_OR_RETURN(bool pre_ln, config.Bool("do_layer_norm_before", true));
  OFFSITE_ASSIGN_OR_RETURN(bool bias, config.Bool("enable_bias", true));
  OFFSITE_ASSIGN_OR_RETURN(bool affine, config.Bool("layer_norm_elementwise_affine", true));
  OFFSITE_ASSIGN_OR_RETURN(bool no_final_norm, config.Bool("_remove_final_layer_norm", false));
  OFFSITE_ASSIGN_OR_RETURN(std::string act, config.String("activation_function", "relu"));
  OFFSITE_RETURN_IF_ERROR(CheckInt32("word_embed_proj_dim", proj_dim));
  if (!bias) return Unsupported(family, "enable_bias false");
  if (!affine) return Unsupported(family, "layer_norm_elementwise_affine false");
  if (ffn != 4 * c) {
    return Unsupported(
        family,
        absl::StrCat("ffn_dim ", ffn, " (an MLP width other than 4 * hidden_size = ", 4 * c, ")"));
  }
  OFFSITE_ASSIGN_OR_RETURN(std::string activation, GptActivation(family, act));
  FamilyImport out;
  OFFSITE_ASSIGN_OR_RETURN(*out.arch.mutable_gpt(),
                           GptArchOf({{{"vocab_size", vocab},
                                       {"max_position_embeddings", positions},
                                       {"hidden_size", c},
                                       {"num_hidden_layers", layers},
                                       {"num_attention_heads", heads}}},
                                     activation));
  // As Hugging Face's OPTDecoder: post-LN (OPT-350m) has no final LayerNorm.
  const bool final_norm = pre_ln && !no_final_norm;
  out.arch.mutable_gpt()->set_post_ln(!pre_ln);
  out.arch.mutable_gpt()->set_no_final_norm(pre_ln && no_final_norm);
  if (proj_dim != c) out.arch.mutable_gpt()->set_embed_dim(static_cast<int32_t>(proj_dim));
  out.plan = OptPlan(vocab, positions, c, layers, proj_dim, final_norm);
  return out;
}

absl::StatusOr<FamilyImport> ConvNextV2Import(const HfConfig& config) {
  const HfFamily family = HfFamily::kConvNextV2;
  OFFSITE_RETURN_IF_ERROR(CheckModelType(config, family));
  OFFSITE_ASSIGN_OR_RETURN(int64_t in_channels, config.Int("num_channels", 3));
  OFFSITE_ASSIGN_OR_RETURN(int64_t patch, config.Int("patch_size", 4));
  OFFSITE_ASSIGN_OR_RETURN(std::vector<int64_t> depths, config.IntList("depths", {3, 3, 9, 3}));
  OFFSITE_ASSIGN_OR_RETURN(std::vector<int64_t> dims,
                           config.IntList("hidden_sizes", {96, 192, 384, 768}));
  OFFSITE_ASSIGN_OR_RETURN(int64_t stages, config.Int("num_stages", 4));
  OFFSITE_ASSIGN_OR_RETURN(std::string act, config.String("hidden_act", "gelu"));
  OFFSITE_ASSIGN_OR_RETURN(double drop_path, config.Double("drop_path_rate", 0.0));
  OFFSITE_ASSIGN_OR_RETURN(int64_t classes, config.NumLabels());
  if (act != "gelu") return Unsupported(family, absl::StrCat("hidden_act \"", act, "\""));
  if (depths.empty() || depths.size() != dims.size() ||
      static_cast<int64_t>(depths.size()) != stages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: num_stages ", stages, ", depths [", absl::StrJoin(depths, ", "),
        "] and hidden_sizes [", absl::StrJoin(dims, ", "), "] must agree on the number of stages"));
  }
  OFFSITE_RETURN_IF_ERROR(CheckInt32("num_channels", in_channels));
  OFFSITE_RETURN_IF_ERROR(CheckInt32("patch_size", patch));
  OFFSITE_RETURN_IF_ERROR(CheckInt32("num_labels", classes));
  for (size_t s = 0; s < depths.size(); ++s) {
    OFFSITE_RETURN_IF_ERROR(CheckInt32(absl::StrCat("depths[", s, "]"), depths[s]));
    OFFSITE_RETURN_IF_ERROR(CheckInt32(absl::StrCat("hidden_sizes[", s, "]"), dims[s]));
  }

  FamilyImport out;
  v1::ConvNextV2Arch* arch = out.arch.mutable_convnext_v2();
  for (size_t s = 0; s < depths.size(); ++s) {
    arch->add_depths(static_cast<int32_t>(depths[s]));
    arch->add_dims(static_cast<int32_t>(dims[s]));
  }
  arch->set_stem_stride(static_cast<int32_t>(patch));
  arch->set_drop_path(drop_path);
  out.arch.set_in_channels(static_cast<int32_t>(in_channels));
  out.arch.set_num_classes(static_cast<int32_t>(classes));
  out.plan = ConvNextV2Plan(in_channels, patch, depths, dims, classes);
  return out;
}

}  // namespace

absl::StatusOr<HfFamily> ParseHfFamily(const std::string& name) {
  if (name == "gpt2") return HfFamily::kGpt2;
  if (name == "opt") return HfFamily::kOpt;
  if (name == "convnextv2") return HfFamily::kConvNextV2;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model family \"", name, "\"; known: gpt2, opt, convnextv2"));
}

std::string HfFamilyName(HfFamily family) {
  switch (family) {
    case HfFamily::kGpt2:
      return "gpt2";
    case HfFamily::kOpt:
      return "opt";
    case HfFamily::kConvNextV2:
      return "convnextv2";
  }
  return "unknown";
}

absl::StatusOr<ImportedModel> ImportHfCheckpoint(HfFamily family, const std::string& config_json,
                                                 const SafetensorsFile& weights) {
  OFFSITE_ASSIGN_OR_RETURN(HfConfig config, HfConfig::Parse(config_json));
  absl::StatusOr<FamilyImport> family_import;
  switch (family) {
    case HfFamily::kGpt2:
      family_import = Gpt2Import(config);
      break;
    case HfFamily::kOpt:
      family_import = OptImport(config);
      break;
    case HfFamily::kConvNextV2:
      family_import = ConvNextV2Import(config);
      break;
  }
  OFFSITE_RETURN_IF_ERROR(family_import.status());
  ImportedModel imported;
  absl::StatusOr<v1::ModelArch> arch = ResolveModelArch(family_import->arch, "config.json");
  if (!arch.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(HfFamilyName(family), " checkpoint: ", arch.status().message()));
  }
  imported.arch = *std::move(arch);
  OFFSITE_ASSIGN_OR_RETURN(imported.tensors, ApplyPlan(family_import->plan, family, weights));
  return imported;
}

absl::StatusOr<SafetensorsFile> ImportHfModelFile(
    HfFamily family, const std::string& config_json, const SafetensorsFile& weights,
    const std::map<std::string, std::string>& extra_metadata) {
  OFFSITE_ASSIGN_OR_RETURN(ImportedModel imported,
                           ImportHfCheckpoint(family, config_json, weights));
  OFFSITE_ASSIGN_OR_RETURN(std::shared_ptr<BlockModelImpl> model, MakeBlockModel(imported.arch));
  // Every tensor of the model must come from the checkpoint, not from its
  // random initialisation.
  std::set<std::string> names;
  for (const NamedTensor& t : imported.tensors) names.insert(t.name);
  std::vector<std::string> uncovered;
  for (const auto& item : model->named_parameters()) {
    if (!names.count(item.key())) uncovered.push_back(item.key());
  }
  for (const auto& item : model->named_buffers()) {
    if (!names.count(item.key())) uncovered.push_back(item.key());
  }
  if (!uncovered.empty()) {
    return absl::InternalError(
        absl::StrCat("the ", HfFamilyName(family), " import does not fill ", Listed(uncovered)));
  }
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(imported.tensors, *model));
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file, ModelToFile(imported.arch, *model));
  for (const auto& [key, value] : extra_metadata) file.metadata[key] = value;
  file.metadata[kMetaSource] = absl::StrCat("huggingface:", HfFamilyName(family));
  return file;
}

}  // namespace offsite
