// Hugging Face import: small random checkpoints with the real names, shapes
// and config keys, converted and run by Offsite, against an independent
// reference forward pass in plain torch (Python, Debian's python3-torch),
// plus the errors for checkpoints Offsite cannot take.

#include "models/hf_import.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "common/safetensors.h"
#include "models/block_model.h"
#include "models/gpt.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

constexpr char kPython[] = "/usr/bin/python3";

// The reference: reads the Hugging Face-named safetensors file with its own
// parser and runs the Hugging Face forward pass (GPT2LMHeadModel,
// OPTForCausalLM, ConvNextV2ForImageClassification) in float64.
// Usage: reference.py FAMILY CONFIG WEIGHTS INPUTS OUT; writes logits as raw
// little-endian float32.
constexpr char kReferenceScript[] = R"PY(
import json, math, struct, sys
import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64}

def load(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[8 + n + begin:8 + n + end])
        t = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = t.double() if t.is_floating_point() else t
    return out

def strip(w, prefix):
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in w.items()}

def causal_attention(q, k, v, n_head, scale):
    n, t, c = q.shape
    d = c // n_head
    heads = lambda m: m.reshape(n, t, n_head, d).transpose(1, 2)
    q, k, v = heads(q), heads(k), heads(v)
    s = (q * scale) @ k.transpose(-2, -1)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(n, t, c)

def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

ACTIVATIONS = {"gelu_new": gelu_new, "gelu": F.gelu, "relu": F.relu}

def gpt2(w, cfg, ids):
    w = strip(w, "transformer.")
    c, heads = cfg["n_embd"], cfg["n_head"]
    act = ACTIVATIONS[cfg.get("activation_function", "gelu_new")]
    conv1d = lambda x, p: torch.addmm(w[p + ".bias"], x.reshape(-1, x.shape[-1]),
                                      w[p + ".weight"]).reshape(*x.shape[:-1], -1)
    ln = lambda x, p: F.layer_norm(x, (c,), w[p + ".weight"], w[p + ".bias"],
                                   cfg.get("layer_norm_epsilon", 1e-5))
    x = w["wte.weight"][ids] + w["wpe.weight"][torch.arange(ids.shape[1])]
    for i in range(cfg["n_layer"]):
        h = "h.%d." % i
        q, k, v = conv1d(ln(x, h + "ln_1"), h + "attn.c_attn").split(c, dim=2)
        x = x + conv1d(causal_attention(q, k, v, heads, (c // heads) ** -0.5), h + "attn.c_proj")
        x = x + conv1d(act(conv1d(ln(x, h + "ln_2"), h + "mlp.c_fc")), h + "mlp.c_proj")
    return ln(x, "ln_f") @ w.get("lm_head.weight", w["wte.weight"]).T

def opt(w, cfg, ids):
    w = strip(w, "model.")
    c, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    act = ACTIVATIONS[cfg.get("activation_function", "relu")]
    lin = lambda x, p: F.linear(x, w[p + ".weight"], w[p + ".bias"])
    ln = lambda x, p: F.layer_norm(x, (c,), w[p + ".weight"], w[p + ".bias"], 1e-5)
    pre = cfg.get("do_layer_norm_before", True)  # False: post-LN (OPT-350m)
    mask = torch.ones(ids.shape, dtype=torch.long)
    positions = (torch.cumsum(mask, dim=1) * mask - 1) + 2  # OPTLearnedPositionalEmbedding
    x = w["decoder.embed_tokens.weight"][ids]
    if cfg.get("word_embed_proj_dim", c) != c:
        x = F.linear(x, w["decoder.project_in.weight"])
    x = x + w["decoder.embed_positions.weight"][positions]
    for i in range(cfg["num_hidden_layers"]):
        l = "decoder.layers.%d." % i
        h = ln(x, l + "self_attn_layer_norm") if pre else x
        q = lin(h, l + "self_attn.q_proj") * (c // heads) ** -0.5
        a = causal_attention(q, lin(h, l + "self_attn.k_proj"), lin(h, l + "self_attn.v_proj"),
                             heads, 1.0)
        x = x + lin(a, l + "self_attn.out_proj")
        if not pre:
            x = ln(x, l + "self_attn_layer_norm")
        h = ln(x, l + "final_layer_norm") if pre else x
        x = x + lin(act(lin(h, l + "fc1")), l + "fc2")
        if not pre:
            x = ln(x, l + "final_layer_norm")
    if pre and not cfg.get("_remove_final_layer_norm", False):
        x = ln(x, "decoder.final_layer_norm")
    if cfg.get("word_embed_proj_dim", c) != c:
        x = F.linear(x, w["decoder.project_out.weight"])
    return x @ w.get("lm_head.weight", w["decoder.embed_tokens.weight"]).T

def convnextv2(w, cfg, images):
    w = strip(w, "convnextv2.")
    def ln_channels_first(x, p):  # ConvNextV2LayerNorm, data_format="channels_first"
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return w[p + ".weight"][:, None, None] * x + w[p + ".bias"][:, None, None]
    x = F.conv2d(images, w["embeddings.patch_embeddings.weight"],
                 w["embeddings.patch_embeddings.bias"], stride=cfg["patch_size"])
    x = ln_channels_first(x, "embeddings.layernorm")
    for s, depth in enumerate(cfg["depths"]):
        st = "encoder.stages.%d." % s
        if s > 0:
            x = ln_channels_first(x, st + "downsampling_layer.0")
            x = F.conv2d(x, w[st + "downsampling_layer.1.weight"],
                         w[st + "downsampling_layer.1.bias"], stride=2)
        for m in range(depth):
            l = st + "layers.%d." % m
            d = x.shape[1]
            h = F.conv2d(x, w[l + "dwconv.weight"], w[l + "dwconv.bias"], padding=3, groups=d)
            h = h.permute(0, 2, 3, 1)
            h = F.layer_norm(h, (d,), w[l + "layernorm.weight"], w[l + "layernorm.bias"], 1e-6)
            h = F.gelu(F.linear(h, w[l + "pwconv1.weight"], w[l + "pwconv1.bias"]))
            gx = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
            h = w[l + "grn.weight"] * (h * nx) + w[l + "grn.bias"] + h
            h = F.linear(h, w[l + "pwconv2.weight"], w[l + "pwconv2.bias"])
            x = x + h.permute(0, 3, 1, 2)
    pooled = x.mean([-2, -1])
    pooled = F.layer_norm(pooled, (pooled.shape[-1],), w["layernorm.weight"], w["layernorm.bias"],
                          cfg.get("layer_norm_eps", 1e-12))
    return F.linear(pooled, w["classifier.weight"], w["classifier.bias"])

family, config_path, weights_path, inputs_path, out_path = sys.argv[1:]
cfg = json.load(open(config_path))
weights = load(weights_path)
inputs = load(inputs_path)["input"]
with torch.no_grad():
    logits = {"gpt2": gpt2, "opt": opt, "convnextv2": convnextv2}[family](weights, cfg, inputs)
values = logits.float().flatten().tolist()
open(out_path, "wb").write(struct.pack("<%df" % len(values), *values))
)PY";

bool PythonTorchAvailable() {
  static const bool available =
      std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0;
  return available;
}

// A fresh directory under the test temp dir, removed with its contents at
// scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = ::testing::TempDir() + "hf_import_test.XXXXXX";
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// A Hugging Face checkpoint being built: tensors by their Hugging Face names.
struct Checkpoint {
  SafetensorsFile file;

  void Add(const std::string& name, std::vector<int64_t> shape, double scale = 0.3,
           double mean = 0.0) {
    file.tensors.push_back({name, torch::randn(shape) * scale + mean});
  }
  void Norm(const std::string& name, int64_t dim) {
    Add(name + ".weight", {dim}, 0.1, 1.0);
    Add(name + ".bias", {dim}, 0.1);
  }
  void Linear(const std::string& name, int64_t out, int64_t in) {
    Add(name + ".weight", {out, in});
    Add(name + ".bias", {out}, 0.1);
  }
  const torch::Tensor& Get(const std::string& name) const {
    for (const NamedTensor& t : file.tensors) {
      if (t.name == name) return t.tensor;
    }
    throw std::runtime_error("no tensor " + name);
  }
  void Remove(const std::string& name) {
    auto& ts = file.tensors;
    ts.erase(
        std::remove_if(ts.begin(), ts.end(), [&](const NamedTensor& t) { return t.name == name; }),
        ts.end());
  }
  void Rename(const std::string& from, const std::string& to) {
    for (NamedTensor& t : file.tensors) {
      if (t.name == from) t.name = to;
    }
  }
  void ToDtype(c10::ScalarType type) {
    for (NamedTensor& t : file.tensors) t.tensor = t.tensor.to(type);
  }
};

constexpr int64_t kVocab = 50;
constexpr int64_t kPositions = 16;
constexpr int64_t kWidth = 32;
constexpr int64_t kHeads = 4;
constexpr int64_t kLayers = 2;

using Json = nlohmann::json;

// `base` with the keys of `overrides` replaced, as JSON text.
std::string Config(const char* base, const Json& overrides) {
  Json config = Json::parse(base);
  config.update(overrides);
  return config.dump();
}

std::string Gpt2Config(const Json& overrides = Json::object()) {
  return Config(R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50,
             "n_positions": 16, "n_ctx": 16, "n_embd": 32, "n_layer": 2, "n_head": 4,
             "n_inner": null, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new",
             "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
             "scale_attn_weights": true, "bos_token_id": 49, "eos_token_id": 49})",
                overrides);
}

// GPT2LMHeadModel's state dict: "transformer." names, the causal-mask
// buffers, and the tied lm_head.
Checkpoint Gpt2Checkpoint() {
  torch::manual_seed(1);
  Checkpoint ckpt;
  const int64_t c = kWidth;
  ckpt.Add("transformer.wte.weight", {kVocab, c});
  ckpt.Add("transformer.wpe.weight", {kPositions, c});
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string h = "transformer.h." + std::to_string(i) + ".";
    ckpt.Norm(h + "ln_1", c);
    ckpt.file.tensors.push_back(
        {h + "attn.bias",
         torch::ones({kPositions, kPositions}).tril().view({1, 1, kPositions, kPositions})});
    ckpt.file.tensors.push_back({h + "attn.masked_bias", torch::tensor(-1e4)});
    // Conv1D: weight (in, out).
    ckpt.Add(h + "attn.c_attn.weight", {c, 3 * c});
    ckpt.Add(h + "attn.c_attn.bias", {3 * c}, 0.1);
    ckpt.Add(h + "attn.c_proj.weight", {c, c});
    ckpt.Add(h + "attn.c_proj.bias", {c}, 0.1);
    ckpt.Norm(h + "ln_2", c);
    ckpt.Add(h + "mlp.c_fc.weight", {c, 4 * c});
    ckpt.Add(h + "mlp.c_fc.bias", {4 * c}, 0.1);
    ckpt.Add(h + "mlp.c_proj.weight", {4 * c, c});
    ckpt.Add(h + "mlp.c_proj.bias", {c}, 0.1);
  }
  ckpt.Norm("transformer.ln_f", c);
  ckpt.file.tensors.push_back({"lm_head.weight", ckpt.Get("transformer.wte.weight").clone()});
  return ckpt;
}

std::string OptConfig(const Json& overrides = Json::object()) {
  return Config(R"({"model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": 50,
             "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 128,
             "num_attention_heads": 4, "max_position_embeddings": 16,
             "do_layer_norm_before": true, "word_embed_proj_dim": 32,
             "activation_function": "relu", "enable_bias": true,
             "layer_norm_elementwise_affine": true, "dropout": 0.1, "attention_dropout": 0.0,
             "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2})",
                overrides);
}

// OPTForCausalLM's state dict. `embed_dim` other than kWidth: OPT-350m's
// project_in / project_out; `final_norm`: whether the decoder has one.
Checkpoint OptCheckpoint(int64_t embed_dim = kWidth, bool final_norm = true) {
  torch::manual_seed(2);
  Checkpoint ckpt;
  const int64_t c = kWidth;
  ckpt.Add("model.decoder.embed_tokens.weight", {kVocab, embed_dim});
  if (embed_dim != c) {
    ckpt.Add("model.decoder.project_in.weight", {c, embed_dim});
    ckpt.Add("model.decoder.project_out.weight", {embed_dim, c});
  }
  ckpt.Add("model.decoder.embed_positions.weight", {kPositions + 2, c});
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string l = "model.decoder.layers." + std::to_string(i) + ".";
    ckpt.Linear(l + "self_attn.k_proj", c, c);
    ckpt.Linear(l + "self_attn.v_proj", c, c);
    ckpt.Linear(l + "self_attn.q_proj", c, c);
    ckpt.Linear(l + "self_attn.out_proj", c, c);
    ckpt.Norm(l + "self_attn_layer_norm", c);
    ckpt.Linear(l + "fc1", 4 * c, c);
    ckpt.Linear(l + "fc2", c, 4 * c);
    ckpt.Norm(l + "final_layer_norm", c);
  }
  if (final_norm) ckpt.Norm("model.decoder.final_layer_norm", c);
  ckpt.file.tensors.push_back(
      {"lm_head.weight", ckpt.Get("model.decoder.embed_tokens.weight").clone()});
  return ckpt;
}

const std::vector<int64_t> kDepths = {1, 2};
const std::vector<int64_t> kDims = {8, 16};
constexpr int64_t kChannels = 3;
constexpr int64_t kPatch = 2;
constexpr int64_t kClasses = 3;

std::string ConvNextV2Config(const Json& overrides = Json::object()) {
  return Config(
      R"({"model_type": "convnextv2", "architectures": ["ConvNextV2ForImageClassification"],
             "num_channels": 3, "patch_size": 2, "num_stages": 2, "hidden_sizes": [8, 16],
             "depths": [1, 2], "hidden_act": "gelu", "initializer_range": 0.02,
             "layer_norm_eps": 1e-12, "drop_path_rate": 0.1, "image_size": 16,
             "id2label": {"0": "a", "1": "b", "2": "c"},
             "label2id": {"a": 0, "b": 1, "c": 2}})",
      overrides);
}

// ConvNextV2ForImageClassification's state dict.
Checkpoint ConvNextV2Checkpoint() {
  torch::manual_seed(3);
  Checkpoint ckpt;
  ckpt.Add("convnextv2.embeddings.patch_embeddings.weight", {kDims[0], kChannels, kPatch, kPatch});
  ckpt.Add("convnextv2.embeddings.patch_embeddings.bias", {kDims[0]}, 0.1);
  ckpt.Norm("convnextv2.embeddings.layernorm", kDims[0]);
  for (size_t s = 0; s < kDepths.size(); ++s) {
    const std::string st = "convnextv2.encoder.stages." + std::to_string(s) + ".";
    const int64_t d = kDims[s];
    if (s > 0) {
      ckpt.Norm(st + "downsampling_layer.0", kDims[s - 1]);
      ckpt.Add(st + "downsampling_layer.1.weight", {d, kDims[s - 1], 2, 2});
      ckpt.Add(st + "downsampling_layer.1.bias", {d}, 0.1);
    }
    for (int64_t m = 0; m < kDepths[s]; ++m) {
      const std::string l = st + "layers." + std::to_string(m) + ".";
      ckpt.Add(l + "dwconv.weight", {d, 1, 7, 7});
      ckpt.Add(l + "dwconv.bias", {d}, 0.1);
      ckpt.Norm(l + "layernorm", d);
      ckpt.Linear(l + "pwconv1", 4 * d, d);
      ckpt.Add(l + "grn.weight", {1, 1, 1, 4 * d});
      ckpt.Add(l + "grn.bias", {1, 1, 1, 4 * d}, 0.1);
      ckpt.Linear(l + "pwconv2", d, 4 * d);
    }
  }
  ckpt.Norm("convnextv2.layernorm", kDims.back());
  ckpt.Linear("classifier", kClasses, kDims.back());
  return ckpt;
}

// Reference logits from the Python script, shaped like `like`.
torch::Tensor ReferenceLogits(const std::string& family, const std::string& config,
                              const SafetensorsFile& weights, const torch::Tensor& input,
                              c10::IntArrayRef shape) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  const std::string script = dir + "/reference.py";
  WriteText(script, kReferenceScript);
  WriteText(dir + "/config.json", config);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", weights).ok());
  SafetensorsFile inputs;
  inputs.tensors.push_back({"input", input});
  EXPECT_TRUE(WriteSafetensors(dir + "/input.safetensors", inputs).ok());
  const std::string out = dir + "/logits.f32";
  const std::string command = std::string(kPython) + " " + script + " " + family + " " + dir +
                              "/config.json " + dir + "/model.safetensors " + dir +
                              "/input.safetensors " + out;
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  std::ifstream in(out, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  const std::string data = bytes.str();
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  EXPECT_EQ(static_cast<int64_t>(data.size()), numel * 4);
  if (static_cast<int64_t>(data.size()) != numel * 4) return torch::zeros(shape);
  return torch::from_blob(const_cast<char*>(data.data()), shape, torch::kFloat).clone();
}

// Imports, loads the model file as the server would, and runs it.
torch::Tensor OffsiteLogits(HfFamily family, const std::string& config,
                            const SafetensorsFile& weights, const torch::Tensor& input) {
  absl::StatusOr<SafetensorsFile> file = ImportHfModelFile(family, config, weights);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return {};
  // Through the bytes, as a registered model travels.
  absl::StatusOr<std::string> bytes = SerializeSafetensors(*file);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> parsed = ParseSafetensors(*bytes, "model.safetensors");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  absl::StatusOr<LoadedModel> loaded = ModelFromFile(*parsed);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  if (!loaded.ok()) return {};
  loaded->model->eval();
  torch::NoGradGuard no_grad;
  return loaded->model->forward(input);
}

void ExpectClose(const torch::Tensor& ours, const torch::Tensor& reference) {
  ASSERT_TRUE(ours.defined());
  ASSERT_EQ(ours.sizes(), reference.sizes());
  const double scale = std::max(1.0, reference.abs().max().item<double>());
  const double diff = (ours - reference).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4 * scale) << "max |logit difference| " << diff << " at logit scale " << scale;
  // Not a trivially small output.
  EXPECT_GT(reference.std().item<double>(), 0.1);
}

torch::Tensor TokenIds() {
  torch::manual_seed(7);
  return torch::randint(kVocab, {2, 11}, torch::kLong);
}

class HfImportReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!PythonTorchAvailable()) GTEST_SKIP() << kPython << " cannot import torch";
  }
};

TEST_F(HfImportReferenceTest, Gpt2LogitsMatchReference) {
  const Checkpoint ckpt = Gpt2Checkpoint();
  const torch::Tensor ids = TokenIds();
  const torch::Tensor ours = OffsiteLogits(HfFamily::kGpt2, Gpt2Config(), ckpt.file, ids);
  ExpectClose(ours, ReferenceLogits("gpt2", Gpt2Config(), ckpt.file, ids, {2, 11, kVocab}));
}

TEST_F(HfImportReferenceTest, Gpt2WithoutPrefixInHalfPrecisionAndExactGeluMatchesReference) {
  // GPT2Model names (no "transformer."), no lm_head, F16, exact GELU.
  Checkpoint ckpt = Gpt2Checkpoint();
  ckpt.Remove("lm_head.weight");
  for (NamedTensor& t : ckpt.file.tensors)
    t.name = t.name.substr(std::string("transformer.").size());
  ckpt.ToDtype(torch::kHalf);
  const std::string config = Gpt2Config({{"activation_function", "gelu"}});
  const torch::Tensor ids = TokenIds();
  const torch::Tensor ours = OffsiteLogits(HfFamily::kGpt2, config, ckpt.file, ids);
  ExpectClose(ours, ReferenceLogits("gpt2", config, ckpt.file, ids, {2, 11, kVocab}));
}

TEST_F(HfImportReferenceTest, OptLogitsMatchReference) {
  const Checkpoint ckpt = OptCheckpoint();
  const torch::Tensor ids = TokenIds();
  const torch::Tensor ours = OffsiteLogits(HfFamily::kOpt, OptConfig(), ckpt.file, ids);
  ExpectClose(ours, ReferenceLogits("opt", OptConfig(), ckpt.file, ids, {2, 11, kVocab}));
}

TEST_F(HfImportReferenceTest, OptInBfloat16WithDecoderNamesMatchesReference) {
  // OPTModel names ("decoder." without "model."), BF16.
  Checkpoint ckpt = OptCheckpoint();
  ckpt.Remove("lm_head.weight");
  for (NamedTensor& t : ckpt.file.tensors) t.name = t.name.substr(std::string("model.").size());
  ckpt.ToDtype(torch::kBFloat16);
  const torch::Tensor ids = TokenIds();
  const torch::Tensor ours = OffsiteLogits(HfFamily::kOpt, OptConfig(), ckpt.file, ids);
  ExpectClose(ours, ReferenceLogits("opt", OptConfig(), ckpt.file, ids, {2, 11, kVocab}));
}

TEST_F(HfImportReferenceTest, Opt350mShapedPostLnWithProjectionsMatchesReference) {
  // OPT-350m: post-LN, no final LayerNorm, a narrower embedding (here 16 of
  // 32) projected in and out.
  const std::string config =
      OptConfig({{"do_layer_norm_before", false}, {"word_embed_proj_dim", 16}});
  const Checkpoint ckpt = OptCheckpoint(16, /*final_norm=*/false);
  const torch::Tensor ids = TokenIds();
  const torch::Tensor ours = OffsiteLogits(HfFamily::kOpt, config, ckpt.file, ids);
  ExpectClose(ours, ReferenceLogits("opt", config, ckpt.file, ids, {2, 11, kVocab}));
  absl::StatusOr<ImportedModel> imported = ImportHfCheckpoint(HfFamily::kOpt, config, ckpt.file);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_TRUE(imported->arch.gpt().post_ln());
  EXPECT_EQ(imported->arch.gpt().embed_dim(), 16);
}

TEST_F(HfImportReferenceTest, OptWithoutFinalNormMatchesReference) {
  const std::string config = OptConfig({{"_remove_final_layer_norm", true}});
  const Checkpoint ckpt = OptCheckpoint(kWidth, /*final_norm=*/false);
  const torch::Tensor ids = TokenIds();
  const torch::Tensor ours = OffsiteLogits(HfFamily::kOpt, config, ckpt.file, ids);
  ExpectClose(ours, ReferenceLogits("opt", config, ckpt.file, ids, {2, 11, kVocab}));
}

TEST_F(HfImportReferenceTest, ConvNextV2LogitsMatchReference) {
  const Checkpoint ckpt = ConvNextV2Checkpoint();
  torch::manual_seed(8);
  const torch::Tensor images = torch::randn({2, kChannels, 16, 16});
  const torch::Tensor ours =
      OffsiteLogits(HfFamily::kConvNextV2, ConvNextV2Config(), ckpt.file, images);
  ExpectClose(ours,
              ReferenceLogits("convnextv2", ConvNextV2Config(), ckpt.file, images, {2, kClasses}));
}

// --- What the import produces ---------------------------------------------------

TEST(HfImportTest, GptArchCarriesSizesAndActivation) {
  absl::StatusOr<ImportedModel> gpt2 =
      ImportHfCheckpoint(HfFamily::kGpt2, Gpt2Config(), Gpt2Checkpoint().file);
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ(gpt2->arch.gpt().vocab_size(), kVocab);
  EXPECT_EQ(gpt2->arch.gpt().n_positions(), kPositions);
  EXPECT_EQ(gpt2->arch.gpt().n_layer(), kLayers);
  EXPECT_EQ(gpt2->arch.gpt().activation(), "");  // The default, gelu_new.

  absl::StatusOr<ImportedModel> opt =
      ImportHfCheckpoint(HfFamily::kOpt, OptConfig(), OptCheckpoint().file);
  ASSERT_TRUE(opt.ok()) << opt.status();
  EXPECT_EQ(opt->arch.gpt().activation(), "relu");
  EXPECT_EQ(opt->arch.gpt().n_positions(), kPositions);
  for (const NamedTensor& t : opt->tensors) {
    if (t.name == "wpe.weight") EXPECT_EQ(t.tensor.size(0), kPositions);
  }
}

TEST(HfImportTest, ConvNextV2ArchComesFromConfig) {
  absl::StatusOr<ImportedModel> imported =
      ImportHfCheckpoint(HfFamily::kConvNextV2, ConvNextV2Config(), ConvNextV2Checkpoint().file);
  ASSERT_TRUE(imported.ok()) << imported.status();
  const v1::ModelArch& arch = imported->arch;
  EXPECT_EQ(arch.in_channels(), kChannels);
  EXPECT_EQ(arch.num_classes(), kClasses);
  EXPECT_THAT(arch.convnext_v2().depths(), ::testing::ElementsAre(1, 2));
  EXPECT_THAT(arch.convnext_v2().dims(), ::testing::ElementsAre(8, 16));
  EXPECT_EQ(arch.convnext_v2().stem_stride(), kPatch);
  EXPECT_DOUBLE_EQ(arch.convnext_v2().drop_path(), 0.1);
}

TEST(HfImportTest, ModelFileNamesItsSource) {
  absl::StatusOr<SafetensorsFile> file =
      ImportHfModelFile(HfFamily::kOpt, OptConfig(), OptCheckpoint().file, {{"extra", "kept"}});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata.at(kMetaFormat), "model");
  EXPECT_EQ(file->metadata.at(kMetaSource), "huggingface:opt");
  EXPECT_EQ(file->metadata.at("extra"), "kept");
  EXPECT_THAT(file->metadata.at(kMetaArch), HasSubstr("relu"));
}

// --- Refusals -------------------------------------------------------------------

std::string ImportError(HfFamily family, const std::string& config, const SafetensorsFile& file) {
  absl::StatusOr<ImportedModel> imported = ImportHfCheckpoint(family, config, file);
  EXPECT_FALSE(imported.ok());
  if (imported.ok()) return "";
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(imported.status().message());
}

TEST(HfImportTest, UnknownTensorIsNamed) {
  Checkpoint ckpt = Gpt2Checkpoint();
  ckpt.Add("transformer.h.0.attn.extra_proj.weight", {kWidth, kWidth});
  EXPECT_THAT(ImportError(HfFamily::kGpt2, Gpt2Config(), ckpt.file),
              HasSubstr("1 unknown tensor(s): transformer.h.0.attn.extra_proj.weight"));
}

TEST(HfImportTest, ExtraLayerIsReportedAsUnknownTensors) {
  // A checkpoint deeper than its config: every tensor of the extra layer is
  // unknown, the first few listed with a count.
  Checkpoint ckpt = OptCheckpoint();
  Checkpoint deeper = OptCheckpoint();
  for (const NamedTensor& t : deeper.file.tensors) {
    if (t.name.find("layers.1.") != std::string::npos) {
      std::string name = t.name;
      name.replace(name.find("layers.1."), 9, "layers.2.");
      ckpt.file.tensors.push_back({name, t.tensor});
    }
  }
  const std::string error = ImportError(HfFamily::kOpt, OptConfig(), ckpt.file);
  EXPECT_THAT(error, HasSubstr("16 unknown tensor(s): model.decoder.layers.2."));
  EXPECT_THAT(error, HasSubstr("and 8 more"));
}

TEST(HfImportTest, MissingTensorsAreNamed) {
  Checkpoint ckpt = OptCheckpoint();
  ckpt.Remove("model.decoder.layers.1.self_attn.k_proj.weight");
  ckpt.Remove("model.decoder.final_layer_norm.bias");
  const std::string error = ImportError(HfFamily::kOpt, OptConfig(), ckpt.file);
  EXPECT_THAT(error, HasSubstr("2 missing tensor(s)"));
  EXPECT_THAT(error, HasSubstr("model.decoder.layers.1.self_attn.k_proj.weight"));
  EXPECT_THAT(error, HasSubstr("model.decoder.final_layer_norm.bias"));
}

TEST(HfImportTest, WrongShapeIsNamedWithBothShapes) {
  Checkpoint ckpt = ConvNextV2Checkpoint();
  ckpt.Remove("convnextv2.encoder.stages.1.layers.0.grn.weight");
  ckpt.Add("convnextv2.encoder.stages.1.layers.0.grn.weight", {64});
  EXPECT_THAT(ImportError(HfFamily::kConvNextV2, ConvNextV2Config(), ckpt.file),
              HasSubstr("convnextv2.encoder.stages.1.layers.0.grn.weight is [64], config.json "
                        "implies [1, 1, 1, 64]"));
}

TEST(HfImportTest, ConfigDisagreeingWithTensorsIsNamed) {
  // n_embd 64 in config.json, 32 in the tensors.
  EXPECT_THAT(ImportError(HfFamily::kGpt2, Gpt2Config({{"n_embd", 64}}), Gpt2Checkpoint().file),
              HasSubstr("transformer.wte.weight is [50, 32], config.json implies [50, 64]"));
}

TEST(HfImportTest, IntegerTensorIsRefused) {
  Checkpoint ckpt = Gpt2Checkpoint();
  ckpt.Remove("transformer.ln_f.bias");
  ckpt.file.tensors.push_back({"transformer.ln_f.bias", torch::zeros({kWidth}, torch::kLong)});
  EXPECT_THAT(ImportError(HfFamily::kGpt2, Gpt2Config(), ckpt.file),
              HasSubstr("not F32, F16 or BF16: transformer.ln_f.bias (I64)"));
}

TEST(HfImportTest, UntiedLmHeadIsRefused) {
  Checkpoint ckpt = Gpt2Checkpoint();
  ckpt.Remove("lm_head.weight");
  ckpt.Add("lm_head.weight", {kVocab, kWidth});
  EXPECT_THAT(ImportError(HfFamily::kGpt2, Gpt2Config(), ckpt.file),
              HasSubstr("lm_head.weight differs from transformer.wte.weight"));
}

TEST(HfImportTest, OptProjectionsMustBeInTheCheckpoint) {
  // The config asks for OPT-350m's projections; a checkpoint without them is
  // named, tensor by tensor.
  EXPECT_THAT(
      ImportError(HfFamily::kOpt, OptConfig({{"word_embed_proj_dim", 16}}), OptCheckpoint().file),
      HasSubstr("decoder.project_in.weight"));
  EXPECT_THAT(ImportError(HfFamily::kOpt, OptConfig({{"word_embed_proj_dim", 0}}),
                          OptCheckpoint().file),
              HasSubstr("\"word_embed_proj_dim\" must be a positive"));
  EXPECT_THAT(
      ImportError(HfFamily::kOpt, OptConfig({{"enable_bias", false}}), OptCheckpoint().file),
      HasSubstr("enable_bias false"));
}

TEST(HfImportTest, UnsupportedConfigValuesAreRefused) {
  EXPECT_THAT(ImportError(HfFamily::kGpt2, Gpt2Config({{"activation_function", "silu"}}),
                          Gpt2Checkpoint().file),
              HasSubstr("activation_function \"silu\""));
  EXPECT_THAT(ImportError(HfFamily::kGpt2, Gpt2Config({{"n_inner", 64}}), Gpt2Checkpoint().file),
              HasSubstr("n_inner 64"));
  EXPECT_THAT(ImportError(HfFamily::kConvNextV2, ConvNextV2Config({{"hidden_act", "relu"}}),
                          ConvNextV2Checkpoint().file),
              HasSubstr("hidden_act \"relu\""));
  EXPECT_THAT(ImportError(HfFamily::kGpt2, OptConfig(), OptCheckpoint().file),
              HasSubstr("model_type \"opt\", not \"gpt2\""));
  EXPECT_THAT(ImportError(HfFamily::kGpt2, "{not json", Gpt2Checkpoint().file),
              HasSubstr("config.json is not valid JSON"));
  EXPECT_THAT(ImportError(HfFamily::kGpt2, R"({"n_embd": "big"})", Gpt2Checkpoint().file),
              HasSubstr(R"("n_embd" must be an integer, got "big")"));
}

TEST(HfImportTest, TruncatedCheckpointIsAClearError) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors(Gpt2Checkpoint().file);
  ASSERT_TRUE(bytes.ok());
  absl::StatusOr<SafetensorsFile> parsed =
      ParseSafetensors(bytes->substr(0, bytes->size() - 100), "model.safetensors");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("model.safetensors"));
}

// The GPT activation OPT needs (models/gpt.h, GptArch.activation).
TEST(GptActivationTest, ReluMlpIsReluBetweenItsLinears) {
  torch::manual_seed(4);
  GptMlp mlp(8, /*dropout=*/0.0, "relu");
  const torch::Tensor x = torch::randn({2, 3, 8});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(mlp->forward(x), mlp->c_proj(torch::relu(mlp->c_fc(x)))));
}

TEST(GptActivationTest, ArchCarriesActivationAndRejectsUnknownOnes) {
  v1::ModelArch arch;
  arch.mutable_gpt()->set_n_layer(1);
  arch.mutable_gpt()->set_activation("relu");
  absl::StatusOr<v1::ModelArch> resolved = ResolveModelArch(arch);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->gpt().activation(), "relu");
  absl::StatusOr<GptConfig> config = ResolveGptArch(resolved->gpt());
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->activation, "relu");

  arch.mutable_gpt()->clear_activation();
  resolved = ResolveModelArch(arch);
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->gpt().activation(), "");  // The default stays implicit.
  EXPECT_EQ(ResolveGptArch(resolved->gpt())->activation, "gelu_new");

  arch.mutable_gpt()->set_activation("swish");
  resolved = ResolveModelArch(arch);
  ASSERT_FALSE(resolved.ok());
  EXPECT_THAT(std::string(resolved.status().message()), HasSubstr("GptConfig.activation"));
}

TEST(HfImportTest, FamilyNames) {
  EXPECT_EQ(*ParseHfFamily("gpt2"), HfFamily::kGpt2);
  EXPECT_EQ(*ParseHfFamily("opt"), HfFamily::kOpt);
  EXPECT_EQ(*ParseHfFamily("convnextv2"), HfFamily::kConvNextV2);
  EXPECT_FALSE(ParseHfFamily("llama").ok());
}

}  // namespace
}  // namespace offsite
