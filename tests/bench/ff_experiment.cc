// Full-size Forward-Forward experiment on Fashion-MNIST (Debian's
// dataset-fashion-mnist): trains the FF net and a backprop MLP of the same
// widths on the same shuffled batches and prints test accuracy after every
// epoch, then one SUMMARY line. Results: docs/results/forward_forward.md.
//
//   ff_experiment [--epochs 30] [--seed 0] [--hard-negatives | --hard-negatives-from-softmax]
//                 [--hard-negative-temperature 1] [--batch-size 100]
//                 [--lr 1e-3] [--theta 0] [--widths 500,500,500,500]
//                 [--train-limit 0] [--no-backprop] [--threads 2] [--max-minutes 0]
//                 [--cooldown]
//
// The reported figure is the last epoch's test accuracy: no model selection on
// the test set. Without --cooldown the learning rate is constant, so stopping
// after epoch k (at --max-minutes, checked after each epoch) gives exactly what
// --epochs k gives. --cooldown decays both models' learning rate linearly over
// the second half of the epochs (as loeweX's port does).

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/idx.h"
#include "common/runtime.h"
#include "models/forward_forward.h"
#include "models/lr_schedule.h"

namespace offsite {
namespace {

const char* HardNegatives(const ForwardForwardOptions& model) {
  if (!model.hard_negatives) return "no";
  return model.hard_negatives_from_softmax ? "softmax" : "goodness";
}

struct ExperimentOptions {
  int epochs = 30;
  uint64_t seed = 0;
  int64_t batch_size = 100;
  int64_t train_limit = 0;
  bool backprop = true;
  int threads = 2;
  double max_minutes = 0;  // 0: no limit.
  bool cooldown = false;
  ForwardForwardOptions model;
};

[[noreturn]] void Usage(const char* program, const std::string& problem) {
  std::fprintf(stderr,
               "%s\nusage: %s [--epochs N] [--seed N] "
               "[--hard-negatives | --hard-negatives-from-softmax] "
               "[--hard-negative-temperature X] [--batch-size N] "
               "[--lr X] [--theta X] [--widths W,W,...] [--train-limit N] [--no-backprop] "
               "[--threads N] [--max-minutes X] [--cooldown]\n",
               problem.c_str(), program);
  std::exit(2);
}

ExperimentOptions ParseFlags(int argc, char** argv) {
  ExperimentOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(argv[0], flag + " needs a value");
      return argv[++i];
    };
    auto integer = [&](int64_t min) {
      int64_t parsed = 0;
      const std::string text = value();
      if (!absl::SimpleAtoi(text, &parsed) || parsed < min) {
        Usage(argv[0], flag + ": bad value " + text);
      }
      return parsed;
    };
    auto real = [&]() {
      double parsed = 0;
      const std::string text = value();
      if (!absl::SimpleAtod(text, &parsed)) Usage(argv[0], flag + ": bad value " + text);
      return parsed;
    };
    if (flag == "--epochs") {
      options.epochs = static_cast<int>(integer(1));
    } else if (flag == "--seed") {
      options.seed = static_cast<uint64_t>(integer(0));
    } else if (flag == "--hard-negatives") {
      options.model.hard_negatives = true;
    } else if (flag == "--hard-negatives-from-softmax") {
      options.model.hard_negatives = true;
      options.model.hard_negatives_from_softmax = true;
    } else if (flag == "--hard-negative-temperature") {
      options.model.hard_negative_temperature = real();
    } else if (flag == "--batch-size") {
      options.batch_size = integer(1);
    } else if (flag == "--lr") {
      options.model.learning_rate = real();
    } else if (flag == "--theta") {
      options.model.theta = real();
    } else if (flag == "--widths") {
      options.model.layer_widths.clear();
      for (absl::string_view part : absl::StrSplit(value(), ',')) {
        int64_t width = 0;
        if (!absl::SimpleAtoi(part, &width)) Usage(argv[0], "--widths: bad width");
        options.model.layer_widths.push_back(width);
      }
    } else if (flag == "--train-limit") {
      options.train_limit = integer(0);
    } else if (flag == "--no-backprop") {
      options.backprop = false;
    } else if (flag == "--threads") {
      options.threads = static_cast<int>(integer(1));
    } else if (flag == "--max-minutes") {
      options.max_minutes = real();
    } else if (flag == "--cooldown") {
      options.cooldown = true;
    } else {
      Usage(argv[0], "unknown flag " + flag);
    }
  }
  const absl::Status valid = ValidateForwardForwardOptions(options.model);
  if (!valid.ok()) Usage(argv[0], std::string(valid.message()));
  return options;
}

// Mean over rows of the largest probability the goodness-sampled hard
// negatives give one wrong label: near 1 means the draw is all but
// deterministic.
double TopWrongLabelProbability(const torch::Tensor& goodness, const torch::Tensor& labels,
                                double temperature) {
  return HardNegativeProbabilities(goodness, labels, temperature).amax(1).mean().item<double>();
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int Main(int argc, char** argv) {
  const ExperimentOptions options = ParseFlags(argc, argv);
  torch::set_num_threads(options.threads);
  const auto wall_start = std::chrono::steady_clock::now();

  absl::StatusOr<LabeledImages> train =
      LoadIdxDataset(FashionMnistFile("train-images-idx3-ubyte.gz"),
                     FashionMnistFile("train-labels-idx1-ubyte.gz"), options.train_limit);
  absl::StatusOr<LabeledImages> test =
      LoadIdxDataset(FashionMnistFile("t10k-images-idx3-ubyte.gz"),
                     FashionMnistFile("t10k-labels-idx1-ubyte.gz"), 0);
  if (!train.ok() || !test.ok()) {
    std::fprintf(stderr, "%s\n", (!train.ok() ? train.status() : test.status()).ToString().c_str());
    return 1;
  }
  const torch::Tensor train_x = train->images.flatten(1);
  const torch::Tensor test_x = test->images.flatten(1);
  const int64_t n = train_x.size(0);

  std::string widths;
  for (int64_t w : options.model.layer_widths)
    widths += (widths.empty() ? "" : ",") + std::to_string(w);
  std::printf("runtime: %s\n", RuntimeSummary().c_str());
  std::printf(
      "config: train %lld test %lld widths %s epochs %d batch %lld lr %g theta %g "
      "hard_negatives %s temperature %g cooldown %d seed %llu threads %d\n",
      static_cast<long long>(n), static_cast<long long>(test_x.size(0)), widths.c_str(),
      options.epochs, static_cast<long long>(options.batch_size), options.model.learning_rate,
      options.model.theta, HardNegatives(options.model), options.model.hard_negative_temperature,
      options.cooldown ? 1 : 0, static_cast<unsigned long long>(options.seed),
      torch::get_num_threads());
  std::fflush(stdout);

  torch::manual_seed(options.seed);
  ForwardForwardTrainer ff(options.model, torch::kCPU);
  BackpropMlpTrainer backprop(options.model, torch::kCPU);

  double ff_train_s = 0, bp_train_s = 0;
  double ff_goodness = 0, ff_softmax = 0, bp_accuracy = 0;
  int epochs_done = 0;
  for (int epoch = 1; epoch <= options.epochs; ++epoch) {
    double learning_rate = options.model.learning_rate;
    if (options.cooldown) learning_rate = LinearCooldown(epoch, options.epochs, learning_rate);
    ff.SetLearningRate(learning_rate);
    backprop.SetLearningRate(learning_rate);
    const torch::Tensor order = torch::randperm(n, torch::kInt64);
    double ff_loss = 0, softmax_loss = 0, bp_loss = 0;
    int64_t steps = 0;
    double ff_epoch_s = 0, bp_epoch_s = 0;
    for (int64_t start = 0; start < n; start += options.batch_size) {
      const torch::Tensor index = order.slice(0, start, start + options.batch_size);
      const torch::Tensor x = train_x.index_select(0, index);
      const torch::Tensor y = train->labels.index_select(0, index);
      auto t = std::chrono::steady_clock::now();
      const StepStats stats = ff.TrainStep(x, y).value();
      ff_epoch_s += Seconds(t);
      ff_loss += stats.loss;
      softmax_loss += stats.softmax_loss;
      if (options.backprop) {
        t = std::chrono::steady_clock::now();
        bp_loss += backprop.TrainStep(x, y).value();
        bp_epoch_s += Seconds(t);
      }
      ++steps;
    }
    ff_train_s += ff_epoch_s;
    bp_train_s += bp_epoch_s;

    const auto eval_start = std::chrono::steady_clock::now();
    // One goodness pass over the test set serves the accuracy and the diagnostic.
    const torch::Tensor goodness = ff.LabelGoodness(test_x);
    ff_goodness = Accuracy(goodness.argmax(1), test->labels);
    ff_softmax = Accuracy(ff.PredictSoftmax(test_x), test->labels);
    if (options.backprop) bp_accuracy = Accuracy(backprop.Predict(test_x), test->labels);
    std::printf(
        "epoch %d/%d lr %.2g ff_loss %.4f softmax_loss %.4f bp_loss %.4f | test ff_goodness %.4f "
        "ff_softmax %.4f backprop %.4f | top wrong-label p %.3f | ff %.1fs bp %.1fs eval %.1fs\n",
        epoch, options.epochs, learning_rate, ff_loss / steps, softmax_loss / steps,
        bp_loss / steps, ff_goodness, ff_softmax, bp_accuracy,
        TopWrongLabelProbability(goodness.slice(0, 0, 2000), test->labels.slice(0, 0, 2000),
                                 options.model.hard_negative_temperature),
        ff_epoch_s, bp_epoch_s, Seconds(eval_start));
    std::fflush(stdout);
    epochs_done = epoch;
    if (options.max_minutes > 0 && Seconds(wall_start) > 60 * options.max_minutes) {
      std::printf("stopping after epoch %d: past --max-minutes %g\n", epoch, options.max_minutes);
      break;
    }
  }
  std::printf(
      "SUMMARY seed %llu epochs %d hard_negatives %s temperature %g batch %lld lr %g cooldown %d: "
      "ff_goodness %.4f ff_softmax %.4f backprop %.4f | ff_train %.0fs (%.0f samples/s) "
      "bp_train %.0fs (%.0f samples/s) wall %.0fs\n",
      static_cast<unsigned long long>(options.seed), epochs_done, HardNegatives(options.model),
      options.model.hard_negative_temperature, static_cast<long long>(options.batch_size),
      options.model.learning_rate, options.cooldown ? 1 : 0, ff_goodness, ff_softmax, bp_accuracy,
      ff_train_s, n * epochs_done / ff_train_s, bp_train_s,
      bp_train_s > 0 ? n * epochs_done / bp_train_s : 0.0, Seconds(wall_start));
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) { return offsite::Main(argc, argv); }
