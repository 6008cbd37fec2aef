#include "client/local_tuning.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/task_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"
#include "tests/util/idx_writer.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

constexpr char kPackageId[] = "pkg-local-test";

std::map<std::string, torch::Tensor> ByName(const std::vector<NamedTensor>& tensors) {
  std::map<std::string, torch::Tensor> map;
  for (const NamedTensor& t : tensors) map[t.name] = t.tensor;
  return map;
}

// Plain text of short English-like paragraphs: learnable byte statistics.
std::string SampleText(int paragraphs) {
  const std::vector<std::string> words = {
      "the",   "model", "owner", "keeps",   "its", "weights", "and",  "a",      "data",
      "owner", "tunes", "an",    "adapter", "on",  "private", "text", "locally"};
  std::mt19937 rng(7);
  std::string text;
  for (int p = 0; p < paragraphs; ++p) {
    const int length = 8 + static_cast<int>(rng() % 8);
    for (int w = 0; w < length; ++w) {
      text += words[rng() % words.size()];
      text += w + 1 == length ? ".\n" : " ";
    }
    text += "\n";
  }
  return text;
}

class LocalTuningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "local_tuning_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    torch::manual_seed(0);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A 4-block GPT split 1-1-1 (block 2 dropped), written to DIR/package.safetensors.
  void WriteGptPackage() {
    v1::ModelArch arch;
    v1::GptArch* gpt = arch.mutable_gpt();
    gpt->set_n_layer(4);
    gpt->set_n_embd(32);
    gpt->set_n_head(2);
    gpt->set_n_positions(32);
    WritePackage(arch, 0);
  }

  void WritePackage(const v1::ModelArch& arch, int64_t new_head_classes) {
    auto full = MakeBlockModel(arch);
    ASSERT_TRUE(full.ok()) << full.status();
    auto plan = PlanSplit(4, 1, 1, 1);
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto emulator = MakeEmulator(arch, **full, *plan, new_head_classes, /*seed=*/1);
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    PackageOptions options;
    options.package_id = kPackageId;
    options.model_name = "tiny";
    options.new_head_classes = new_head_classes;
    auto file = MakePackageFile(*emulator, *plan, options, &manifest_);
    ASSERT_TRUE(file.ok()) << file.status();
    package_ = *file;
    ASSERT_TRUE(WriteSafetensors(dir_ + "/" + kPackageFileName, package_).ok());
  }

  void WriteText() {
    text_path_ = dir_ + "/notes.txt";
    std::ofstream(text_path_) << SampleText(300);
  }

  LocalTuneOptions TextOptions() {
    LocalTuneOptions options;
    options.package_dir = dir_;
    options.data.mutable_text()->set_path(text_path_);
    options.data.mutable_text()->set_seed(3);
    options.steps = 20;
    options.batch_size = 8;
    options.learning_rate = 3e-3;
    options.eval_interval = 10;
    options.seed = 5;
    return options;
  }

  std::set<std::string> AdapterNames() const {
    std::set<std::string> names;
    for (const v1::TensorInfo& info : manifest_.tensors()) {
      if (info.role() == v1::TensorInfo::ADAPTER) names.insert(info.name());
    }
    return names;
  }

  std::string dir_;
  std::string text_path_;
  v1::PackageManifest manifest_;
  SafetensorsFile package_;
};

TEST_F(LocalTuningTest, TunesTheAdapterOnlyAndLowersValidationLoss) {
  WriteGptPackage();
  WriteText();
  int64_t last_step = -1;
  LocalTuneOptions options = TextOptions();
  bool started = false;
  options.on_start = [&](const LocalTuneReport& plan) {
    started = true;
    EXPECT_EQ(plan.steps, 20);
    EXPECT_GT(plan.trainable_parameters, 0);
  };
  absl::StatusOr<LocalTuneReport> report =
      TuneLocally(options, [&](int64_t step, const std::map<std::string, double>& metrics) {
        EXPECT_TRUE(metrics.count("train_loss") || step == 0);
        last_step = step;
        return true;
      });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(started);
  EXPECT_EQ(last_step, 20);
  EXPECT_EQ(report->package_id, kPackageId);
  EXPECT_EQ(report->task, "language_modeling");
  EXPECT_EQ(report->split, "1-1-1");
  EXPECT_LT(report->ot_emulator.loss, report->emulator_zero_shot.loss);
  EXPECT_GT(report->best_step, 0);
  EXPECT_TRUE(report->metrics.count("emulator_zero_shot_perplexity"));
  EXPECT_TRUE(report->metrics.count("ot_emulator_perplexity"));

  // The adapter file holds exactly the ADAPTER tensors, with the issued shapes.
  absl::StatusOr<SafetensorsFile> adapter = ReadSafetensors(dir_ + "/" + kAdapterFileName);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  std::set<std::string> names;
  for (const NamedTensor& t : adapter->tensors) names.insert(t.name);
  EXPECT_EQ(names, AdapterNames());
  EXPECT_TRUE(CheckAdapter(manifest_, *adapter).ok());
  EXPECT_TRUE(FileExists(dir_ + "/" + kTuneReportFileName));

  // Frozen tensors are as issued; adapter tensors moved.
  std::map<std::string, torch::Tensor> issued = ByName(package_.tensors);
  int64_t changed = 0;
  for (const auto& item : report->tuned_emulator->named_parameters()) {
    const torch::Tensor now = item.value().detach().cpu();
    ASSERT_TRUE(issued.count(item.key())) << item.key();
    const bool same = torch::equal(now, issued[item.key()]);
    if (AdapterNames().count(item.key())) {
      changed += same ? 0 : 1;
    } else {
      EXPECT_TRUE(same) << item.key() << " is frozen but changed";
    }
  }
  EXPECT_GT(changed, 0);

  // Plugged into a fresh copy of the package's emulator, the pushed adapter
  // gives the lower validation loss too.
  absl::StatusOr<OpenedPackage> fresh = OpenPackage(package_);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  absl::StatusOr<TaskTensors> data = LoadTaskData(options.data, 32, torch::kCPU, "data");
  ASSERT_TRUE(data.ok()) << data.status();
  const double before = Evaluate(*fresh->emulator, *data, 8).loss;
  ASSERT_TRUE(LoadNamedTensors(adapter->tensors, *fresh->emulator).ok());
  const double after = Evaluate(*fresh->emulator, *data, 8).loss;
  EXPECT_NEAR(before, report->emulator_zero_shot.loss, 1e-6);
  EXPECT_LT(after, before);
  EXPECT_NEAR(after, report->ot_emulator.loss, 1e-5);
}

TEST_F(LocalTuningTest, LoraAdapterIsMergedToTheIssuedTensors) {
  WriteGptPackage();
  WriteText();
  LocalTuneOptions options = TextOptions();
  options.tune.lora = true;
  options.tune.lora_rank = 4;
  absl::StatusOr<LocalTuneReport> report = TuneLocally(options, nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_LT(report->ot_emulator.loss, report->emulator_zero_shot.loss);

  absl::StatusOr<SafetensorsFile> adapter = ReadSafetensors(dir_ + "/" + kAdapterFileName);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const v1::TensorInfo& info : manifest_.tensors()) {
    shapes[info.name()] = std::vector<int64_t>(info.shape().begin(), info.shape().end());
  }
  std::set<std::string> names;
  for (const NamedTensor& t : adapter->tensors) {
    EXPECT_THAT(t.name, ::testing::Not(HasSubstr("lora_")));
    ASSERT_TRUE(shapes.count(t.name)) << t.name;
    EXPECT_EQ(t.tensor.sizes().vec(), shapes[t.name]) << t.name;
    names.insert(t.name);
  }
  EXPECT_EQ(names, AdapterNames());
  EXPECT_TRUE(CheckAdapter(manifest_, *adapter).ok());
}

TEST_F(LocalTuningTest, DefaultStepsAreFiveEpochs) {
  WriteGptPackage();
  WriteText();
  LocalTuneOptions options = TextOptions();
  options.steps = 0;
  int64_t planned = 0;
  int64_t train_tokens = 0;
  options.on_start = [&](const LocalTuneReport& plan) {
    planned = plan.steps;
    train_tokens = plan.train_size;
  };
  // Stops at once: only the plan is looked at.
  absl::StatusOr<LocalTuneReport> report =
      TuneLocally(options, [](int64_t, const std::map<std::string, double>&) { return false; });
  EXPECT_EQ(report.status().code(), absl::StatusCode::kCancelled);
  ASSERT_GT(train_tokens, 0);
  EXPECT_EQ(planned, static_cast<int64_t>(std::ceil(5.0 * (train_tokens / 32) / 8)));
  EXPECT_FALSE(FileExists(dir_ + "/" + kAdapterFileName));
}

TEST_F(LocalTuningTest, TamperedPackageIsRefusedNamingTheTensor) {
  WriteGptPackage();
  WriteText();
  // Flip one byte of the last tensor's data (the file's last byte).
  const std::string path = dir_ + "/" + kPackageFileName;
  absl::StatusOr<std::string> bytes = ReadFile(path);
  ASSERT_TRUE(bytes.ok());
  bytes->back() ^= 0x01;
  ASSERT_TRUE(WriteFileAtomic(path, *bytes).ok());
  absl::StatusOr<LocalTuneReport> report = TuneLocally(TextOptions(), nullptr);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr(package_.tensors.back().name));
  EXPECT_THAT(report.status().message(), HasSubstr("SHA-256"));
  EXPECT_FALSE(FileExists(dir_ + "/" + kAdapterFileName));
}

TEST_F(LocalTuningTest, ImagesForALanguageModelAreAClearError) {
  WriteGptPackage();
  absl::StatusOr<testutil::IdxDataSet> idx = testutil::WriteSyntheticIdxDataSet(dir_, 20, 10, 1);
  ASSERT_TRUE(idx.ok()) << idx.status();
  LocalTuneOptions options = TextOptions();
  v1::ImageData* images = options.data.mutable_images();
  images->set_train_images(idx->train_images);
  images->set_train_labels(idx->train_labels);
  images->set_test_images(idx->test_images);
  images->set_test_labels(idx->test_labels);
  absl::StatusOr<LocalTuneReport> report = TuneLocally(options, nullptr);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("language_modeling"));
  EXPECT_THAT(report.status().message(), HasSubstr("must be text"));
}

// Runs the `offsite` binary; returns its exit code and stdout.
int RunClient(const std::string& arguments, std::string* out) {
  const std::string command = std::string(OFFSITE_CLIENT_BIN) + " " + arguments + " 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out->append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(LocalTuningTest, CliTunesOfflineAndWritesTheAdapter) {
  WriteGptPackage();
  WriteText();
  if (!FileExists(OFFSITE_CLIENT_BIN)) GTEST_SKIP() << "build the offsite target first";
  std::string out;
  ASSERT_EQ(RunClient("offsite", &out), 2) << "a missing verb is a usage error";
  ASSERT_EQ(RunClient("offsite tune " + dir_ + " --data " + text_path_ +
                          " --steps 5 --batch-size 4 --lr 3e-3 --seed 2 --json",
                      &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("\"ot_emulator_perplexity\""));
  EXPECT_THAT(out, HasSubstr(kPackageId));
  EXPECT_TRUE(FileExists(dir_ + "/" + kAdapterFileName));
  EXPECT_THAT(out, HasSubstr("\"recompute_emulator\": false"));

  out.clear();
  ASSERT_EQ(RunClient("offsite tune " + dir_ + " --data " + text_path_ +
                          " --steps 2 --batch-size 4 --seed 2 --recompute-emulator --json",
                      &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("\"recompute_emulator\": true"));

  out.clear();
  EXPECT_EQ(RunClient("offsite tune " + dir_ + " --data " + text_path_ + " --server x:1", &out), 2)
      << "tune takes no connection flags";
  EXPECT_EQ(RunClient("offsite tune " + dir_ + " --data " + text_path_ + " --classes 1,2", &out), 2)
      << "--classes is for image packages";
}

class LocalImageTuningTest : public LocalTuningTest {
 protected:
  // A small ConvNeXt V2 (4 blocks over 3 stages) with a new 5-class head.
  void WriteConvNextPackage() {
    v1::ModelArch arch;
    v1::ConvNextV2Arch* cnx = arch.mutable_convnext_v2();
    for (int d : {1, 1, 2}) cnx->add_depths(d);
    for (int d : {8, 16, 32}) cnx->add_dims(d);
    arch.set_num_classes(10);
    WritePackage(arch, 5);
  }

  LocalTuneOptions ImageOptions(const std::vector<int>& classes) {
    absl::StatusOr<testutil::IdxDataSet> idx =
        testutil::WriteSyntheticIdxDataSet(dir_, 300, 100, 1);
    EXPECT_TRUE(idx.ok()) << idx.status();
    LocalTuneOptions options;
    options.package_dir = dir_;
    v1::ImageData* images = options.data.mutable_images();
    images->set_train_images(idx->train_images);
    images->set_train_labels(idx->train_labels);
    images->set_test_images(idx->test_images);
    images->set_test_labels(idx->test_labels);
    for (int c : classes) images->add_classes(c);
    options.steps = 15;
    options.batch_size = 16;
    options.eval_interval = 5;
    return options;
  }
};

TEST_F(LocalImageTuningTest, ClassCountMustMatchTheHead) {
  WriteConvNextPackage();
  absl::StatusOr<LocalTuneReport> report = TuneLocally(ImageOptions({5, 6, 7}), nullptr);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("classifies 5 classes"));
}

TEST_F(LocalImageTuningTest, CliTunesOnPngClassFolders) {
  WriteConvNextPackage();
  if (!FileExists(OFFSITE_CLIENT_BIN)) GTEST_SKIP() << "build the offsite target first";
  const std::string images = dir_ + "/my-images";
  ASSERT_TRUE(testutil::WriteSyntheticPngFolders(images, 5, 6, 2, 3).ok());
  std::string out;
  ASSERT_EQ(RunClient("offsite tune " + dir_ + " --data " + images +
                          " --steps 3 --batch-size 8 --seed 1 --json",
                      &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("\"ot_emulator_accuracy\""));
  EXPECT_THAT(out, HasSubstr("\"train_examples\": 30"));
  EXPECT_TRUE(FileExists(dir_ + "/" + kAdapterFileName));
  // The same folders named one by one; a folder without a test split is a usage error.
  out.clear();
  EXPECT_EQ(RunClient("offsite tune " + dir_ + " --data " + images + "/train --test-data " +
                          images + "/test --steps 1 --batch-size 8 --json",
                      &out),
            0)
      << out;
  EXPECT_EQ(RunClient("offsite tune " + dir_ + " --data " + images + "/train --steps 1", &out), 2);
}

TEST_F(LocalImageTuningTest, TunesAClassifierOnLocalImages) {
  WriteConvNextPackage();
  absl::StatusOr<LocalTuneReport> report = TuneLocally(ImageOptions({5, 6, 7, 8, 9}), nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->task, "classification");
  EXPECT_EQ(report->learning_rate, 1e-3);
  EXPECT_TRUE(report->metrics.count("ot_emulator_accuracy"));
  EXPECT_LE(report->ot_emulator.loss, report->emulator_zero_shot.loss);
  absl::StatusOr<SafetensorsFile> adapter = ReadSafetensors(dir_ + "/" + kAdapterFileName);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  EXPECT_TRUE(CheckAdapter(manifest_, *adapter).ok());
}

}  // namespace
}  // namespace offsite
