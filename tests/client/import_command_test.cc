// `offsite models import` on checkpoint directories: single file, shards,
// tokenizer files, broken files, and the offline --output mode.

#include "client/import_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli_args.h"
#include "common/safetensors.h"
#include "models/offsite_tuning.h"
#include "tests/util/bpe_files.h"
#include "tests/util/hf_checkpoint.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kVocab = 260;
constexpr int64_t kWidth = 8;

constexpr char kConfig[] = R"({"model_type": "gpt2", "vocab_size": 260, "n_positions": 8,
    "n_embd": 8, "n_layer": 2, "n_head": 2, "activation_function": "gelu_new"})";

// A fresh directory under the test temp dir, removed with its contents at
// scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = ::testing::TempDir() + "import_command_test.XXXXXX";
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

// GPT2Model tensors (no "transformer." prefix, as the original gpt2 files).
SafetensorsFile Gpt2Weights() {
  testutil::Gpt2Sizes sizes;
  sizes.vocab = kVocab;
  sizes.width = kWidth;
  return testutil::RandomGpt2Weights(sizes, 5);
}

// 256 byte symbols, "he" and GPT-2's end-of-text: 258 tokens.
std::string VocabJson() { return testutil::ByteLevelVocabJson({"he", "<|endoftext|>"}); }

TEST(ImportCommandTest, ShardedCheckpointWithTokenizerConverts) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  WriteText(dir + "/config.json", kConfig);
  const SafetensorsFile weights = Gpt2Weights();
  SafetensorsFile first;
  SafetensorsFile second;
  std::vector<std::string> map;
  for (size_t i = 0; i < weights.tensors.size(); ++i) {
    const bool in_first = i < weights.tensors.size() / 2;
    (in_first ? first : second).tensors.push_back(weights.tensors[i]);
    map.push_back(absl::StrCat("\"", weights.tensors[i].name, "\": \"model-0000", in_first ? 1 : 2,
                               "-of-00002.safetensors\""));
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", first).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", second).ok());
  WriteText(dir + "/model.safetensors.index.json",
            absl::StrCat(R"({"metadata": {"total_size": 1}, "weight_map": {)",
                         absl::StrJoin(map, ", "), "}}"));
  WriteText(dir + "/vocab.json", VocabJson());
  WriteText(dir + "/merges.txt", "#version: 0.2\nh e\n");

  absl::StatusOr<SafetensorsFile> file = ConvertHfCheckpointDir(HfFamily::kGpt2, dir);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata.at(kMetaTokenizerMerges), "#version: 0.2\nh e\n");
  EXPECT_THAT(file->metadata.at(kMetaTokenizerVocab), HasSubstr("\"he\": 256"));
  absl::StatusOr<LoadedModel> loaded = ModelFromFile(*file);
  ASSERT_TRUE(loaded.ok()) << loaded.status();

  // The same model as from one file.
  absl::StatusOr<SafetensorsFile> single = ImportHfModelFile(HfFamily::kGpt2, kConfig, weights);
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_EQ(single->tensors.size(), file->tensors.size());
  for (size_t i = 0; i < single->tensors.size(); ++i) {
    EXPECT_EQ(single->tensors[i].name, file->tensors[i].name);
    EXPECT_TRUE(torch::equal(single->tensors[i].tensor, file->tensors[i].tensor))
        << single->tensors[i].name;
  }
}

TEST(ImportCommandTest, ShardIndexMustAgreeWithShards) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  WriteText(dir + "/config.json", kConfig);
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00001.safetensors", Gpt2Weights()).ok());
  WriteText(dir + "/model.safetensors.index.json",
            R"({"weight_map": {"wte.weight": "model-00001-of-00001.safetensors"}})");
  absl::StatusOr<SafetensorsFile> file = ConvertHfCheckpointDir(HfFamily::kGpt2, dir);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("does not list"));
}

TEST(ImportCommandTest, TruncatedWeightsFileIsNamed) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  WriteText(dir + "/config.json", kConfig);
  absl::StatusOr<std::string> bytes = SerializeSafetensors(Gpt2Weights());
  ASSERT_TRUE(bytes.ok());
  WriteText(dir + "/model.safetensors", bytes->substr(0, bytes->size() / 2));
  absl::StatusOr<SafetensorsFile> file = ConvertHfCheckpointDir(HfFamily::kGpt2, dir);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("model.safetensors"));
}

TEST(ImportCommandTest, MissingFilesAreNamed) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  absl::StatusOr<SafetensorsFile> file = ConvertHfCheckpointDir(HfFamily::kGpt2, dir);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("config.json"));

  WriteText(dir + "/config.json", kConfig);
  file = ConvertHfCheckpointDir(HfFamily::kGpt2, dir);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("model.safetensors"));
}

TEST(ImportCommandTest, BrokenTokenizerIsRefused) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  WriteText(dir + "/config.json", kConfig);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", Gpt2Weights()).ok());
  WriteText(dir + "/vocab.json", VocabJson());  // merges.txt missing
  absl::StatusOr<SafetensorsFile> file = ConvertHfCheckpointDir(HfFamily::kGpt2, dir);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("merges.txt"));
}

TEST(ImportCommandTest, OutputFlagConvertsOffline) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  WriteText(dir + "/config.json", kConfig);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", Gpt2Weights()).ok());
  const std::string output = dir + "/offsite-model.safetensors";
  EXPECT_EQ(RunModelsImport({"import", "--family", "gpt2", dir, "--output", output}), kExitOk);
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(output);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata.at(kMetaSource), "huggingface:gpt2");
  EXPECT_TRUE(ModelFromFile(*file).ok());
}

TEST(ImportCommandTest, BadCommandLinesAreUsageErrors) {
  EXPECT_EQ(RunModelsImport({"import", "--family", "llama", "/nowhere"}), kExitUsage);
  EXPECT_EQ(RunModelsImport({"import", "/nowhere"}), kExitUsage);
  EXPECT_EQ(RunModelsImport({"import", "--family", "gpt2", "/nowhere", "--bogus", "1"}),
            kExitUsage);
  EXPECT_EQ(RunModelsImport({"import", "--family", "gpt2", "/nowhere", "--output", "/tmp/x"}),
            kExitNotFound);
}

}  // namespace
}  // namespace offsite
