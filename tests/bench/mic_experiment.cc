// MIC's comparison on CPU-sized data: target-domain accuracy (classification)
// or mIoU with per-class IoU (segmentation) of source-only, self-training and
// self-training + MIC, each over several seeds, through the mic job itself
// (server/jobs/mic_job.h) run in-process.
//
//   mic_experiment --task segmentation|classification [--method all|source_only|self_training|mic]
//       [--seeds 0,1,2] [--threads N] [--steps N] [--batch N] [--canvas N]
//       [--train-subset N] [--test-subset N] [--block N] [--ratio R] [--tau T]
//       [--alpha A] [--lr LR] [--depths 1,1,1] [--dims 16,32,64] [--ablation NAME]
//       [--keep-contrast true|false] [--clutter C]
//
// --ablation: no_masking, no_ema, no_quality_weight or no_augmentation (for
// the mic method). Every method gets the same data, model, steps and seeds.

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/runtime.h"
#include "server/jobs/mic_job.h"

namespace offsite {
namespace {

struct Args {
  std::string task = "segmentation";
  std::vector<std::string> methods = {"source_only", "self_training", "mic"};
  std::vector<uint64_t> seeds = {0, 1, 2};
  int threads = 0;
  int steps = 600;
  int batch = 32;
  int canvas = 32;
  int train_subset = 8000;
  int test_subset = 2000;
  int block = 0;
  double ratio = 0;
  double tau = 0;
  double alpha = 0;
  double lr = 2e-3;
  std::vector<int> depths = {1, 1, 1};
  std::vector<int> dims = {16, 32, 64};
  std::string ablation;
  bool keep_contrast = false;
  double clutter = 0;
};

// Runs a job in-process, keeping its last metrics.
class BenchContext : public JobContext {
 public:
  explicit BenchContext(std::string dir) : dir_(std::move(dir)) {}
  const v1::Job& job() const override { return job_; }
  bool cancelled() const override { return false; }
  void ReportProgress(absl::string_view, int64_t, int64_t) override {}
  void ReportMetrics(int64_t step, const std::map<std::string, double>& values) override {
    metrics = values;
    std::fprintf(
        stderr,
        "    step %lld  source_loss %.3f  confidence %.3f  quality %.3f  acc %.4f  miou %.4f\n",
        static_cast<long long>(step), Get("source_loss"), Get("pseudo_label_confidence"),
        Get("quality_weight"), Get("target_accuracy"), Get("target_miou"));
  }
  void Log(absl::string_view line) override {
    std::fprintf(stderr, "  %s\n", std::string(line).c_str());
  }
  const std::string& work_dir() const override { return dir_; }
  bool CheckpointDue() override { return false; }
  absl::StatusOr<v1::Artifact> AddArtifact(const std::string& path, const std::string&) override {
    std::filesystem::remove(path);
    return v1::Artifact();
  }
  absl::StatusOr<std::string> ArtifactPath(const std::string&) override {
    return absl::NotFoundError("no artifacts in the bench");
  }
  const std::string& device() const override { return device_; }

  double Get(const std::string& name) const {
    auto it = metrics.find(name);
    return it == metrics.end() ? NAN : it->second;
  }
  std::map<std::string, double> metrics;

 private:
  v1::Job job_;
  std::string dir_;
  std::string device_ = "cpu";
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

v1::JobSpec Spec(const Args& args, const std::string& method, uint64_t seed) {
  v1::JobSpec job;
  v1::MicSpec* spec = job.mutable_mic();
  spec->set_task(args.task);
  spec->set_method(method);
  spec->set_seed(seed);
  spec->mutable_data()->set_train_subset(args.train_subset);
  spec->mutable_data()->set_test_subset(args.test_subset);
  spec->set_canvas_size(args.canvas);
  spec->set_min_objects(2);
  spec->set_max_objects(3);
  for (int d : args.depths) spec->mutable_arch()->add_depths(d);
  for (int d : args.dims) spec->mutable_arch()->add_dims(d);
  spec->mutable_arch()->set_stem_stride(2);
  spec->set_steps(args.steps);
  spec->set_batch_size(args.batch);
  spec->set_learning_rate(args.lr);
  spec->set_warmup_steps(std::min(50, args.steps));
  spec->set_eval_every(std::max(1, args.steps / 3));
  spec->set_mask_block_size(args.block);
  spec->set_mask_ratio(args.ratio);
  spec->set_pseudo_label_threshold(args.tau);
  spec->set_ema_alpha(args.alpha);
  spec->mutable_target()->set_keep_contrast(args.keep_contrast);
  spec->mutable_target()->set_clutter(args.clutter);
  if (args.ablation == "no_masking") spec->set_no_masking(true);
  if (args.ablation == "no_ema") spec->set_no_ema(true);
  if (args.ablation == "no_quality_weight") spec->set_no_quality_weight(true);
  if (args.ablation == "no_augmentation") spec->set_no_augmentation(true);
  return job;
}

void MeanStd(const std::vector<double>& values, double* mean, double* std) {
  *mean = 0;
  for (double v : values) *mean += v;
  *mean /= std::max<size_t>(1, values.size());
  double var = 0;
  for (double v : values) var += (v - *mean) * (v - *mean);
  *std = values.size() > 1 ? std::sqrt(var / (values.size() - 1)) : 0;
}

int Run(const Args& args) {
  ConfigureThreads(args.threads);
  std::printf("runtime: %s\n", RuntimeSummary().c_str());
  const bool segmentation = args.task == "segmentation";
  const std::string figure = segmentation ? "target_miou" : "target_accuracy";
  const int classes = 11;
  std::map<std::string, std::vector<double>> figures;
  std::map<std::string, std::vector<std::vector<double>>> class_ious;  // method -> class -> seeds
  MicJob job;
  for (const std::string& method : args.methods) {
    for (uint64_t seed : args.seeds) {
      const v1::JobSpec spec = Spec(args, method, seed);
      if (absl::Status valid = job.Validate(spec); !valid.ok()) {
        std::fprintf(stderr, "%s\n", valid.ToString().c_str());
        return 2;
      }
      const std::filesystem::path dir =
          std::filesystem::temp_directory_path() /
          absl::StrCat("mic_experiment_", getpid(), "_", method, "_", seed);
      std::filesystem::remove_all(dir);
      std::filesystem::create_directories(dir);
      BenchContext ctx(dir.string());
      std::fprintf(stderr, "%s seed %llu\n", method.c_str(), static_cast<unsigned long long>(seed));
      const double start = Now();
      absl::Status status = job.Run(spec, ctx);
      std::filesystem::remove_all(dir);
      if (!status.ok()) {
        std::fprintf(stderr, "%s\n", status.ToString().c_str());
        return 1;
      }
      const double value = 100 * ctx.Get(figure);
      figures[method].push_back(value);
      std::printf("%-14s seed %llu  %s %.2f  (pixel/top-1 acc %.2f)  %.0f s\n", method.c_str(),
                  static_cast<unsigned long long>(seed), figure.c_str(), value,
                  100 * ctx.Get("target_accuracy"), Now() - start);
      if (segmentation) {
        auto& per_class = class_ious[method];
        per_class.resize(classes);
        for (int k = 0; k < classes; ++k) {
          per_class[k].push_back(100 * ctx.Get(absl::StrCat("target_iou_", k)));
        }
        std::printf("  IoU:");
        for (int k = 0; k < classes; ++k) std::printf(" %.1f", per_class[k].back());
        std::printf("\n");
      }
      std::fflush(stdout);
    }
  }
  std::printf("\n| method | %s mean | std | seeds |\n|---|---|---|---|\n", figure.c_str());
  for (const std::string& method : args.methods) {
    double mean, std;
    MeanStd(figures[method], &mean, &std);
    std::string values;
    for (double v : figures[method])
      absl::StrAppend(&values, values.empty() ? "" : ", ", absl::StrFormat("%.2f", v));
    std::printf("| %s | %.2f | %.2f | %s |\n", method.c_str(), mean, std, values.c_str());
  }
  if (segmentation) {
    std::printf("\n| class |");
    for (const std::string& method : args.methods) std::printf(" %s |", method.c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < args.methods.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (int k = 0; k < classes; ++k) {
      std::printf("| %d |", k);
      for (const std::string& method : args.methods) {
        double mean, std;
        MeanStd(class_ious[method][k], &mean, &std);
        std::printf(" %.1f |", mean);
      }
      std::printf("\n");
    }
  }
  return 0;
}

template <typename T>
std::vector<T> ParseList(const std::string& text) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    T value;
    if (!absl::SimpleAtoi(part, &value)) {
      std::fprintf(stderr, "bad list element: %s\n", std::string(part).c_str());
      std::exit(2);
    }
    out.push_back(value);
  }
  return out;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) {
  offsite::Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--task") {
      args.task = value;
    } else if (flag == "--method") {
      if (value != "all") args.methods = {value};
    } else if (flag == "--seeds") {
      args.seeds = offsite::ParseList<uint64_t>(value);
    } else if (flag == "--threads") {
      args.threads = std::atoi(value.c_str());
    } else if (flag == "--steps") {
      args.steps = std::atoi(value.c_str());
    } else if (flag == "--batch") {
      args.batch = std::atoi(value.c_str());
    } else if (flag == "--canvas") {
      args.canvas = std::atoi(value.c_str());
    } else if (flag == "--train-subset") {
      args.train_subset = std::atoi(value.c_str());
    } else if (flag == "--test-subset") {
      args.test_subset = std::atoi(value.c_str());
    } else if (flag == "--block") {
      args.block = std::atoi(value.c_str());
    } else if (flag == "--ratio") {
      args.ratio = std::atof(value.c_str());
    } else if (flag == "--tau") {
      args.tau = std::atof(value.c_str());
    } else if (flag == "--alpha") {
      args.alpha = std::atof(value.c_str());
    } else if (flag == "--lr") {
      args.lr = std::atof(value.c_str());
    } else if (flag == "--depths") {
      args.depths = offsite::ParseList<int>(value);
    } else if (flag == "--dims") {
      args.dims = offsite::ParseList<int>(value);
    } else if (flag == "--keep-contrast") {
      args.keep_contrast = value == "true";
    } else if (flag == "--clutter") {
      args.clutter = std::atof(value.c_str());
    } else if (flag == "--ablation") {
      args.ablation = value;
    } else {
      std::fprintf(stderr, "unknown flag %s (see the comment at the top of mic_experiment.cc)\n",
                   flag.c_str());
      return 2;
    }
  }
  return offsite::Run(args);
}
