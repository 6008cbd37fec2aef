// "Tuning computer vision models with task rewards" on CPU-sized models, with
// the functions the reward_tuning jobs run (models/reward_tuning.h,
// server/jobs/reward_tuning_jobs.h):
//
//   1. Detection: a Pix2Seq detector trained by maximum likelihood on
//      Fashion-MNIST scenes, then tuned with REINFORCE on the detection reward;
//      mAP@[.5:.95], mAP@.5, recall and duplicate rate of greedy decoding on the
//      same test scenes before and after, and a PNG of reward against step.
//   2. Cost matrix: a ConvNeXt V2 classifier trained by cross-entropy, then
//      tuned with REINFORCE on a cost-matrix reward; accuracy and mean reward
//      before and after, against the Bayes decision rule on the MLE model's
//      probabilities.
//
//   reward_tuning_experiment [--seed N] [--threads N] [--out DIR]
//       [--train-scenes N] [--test-scenes N] [--canvas PX] [--min-objects N]
//       [--max-objects N] [--min-scale X] [--max-scale X]
//       [--max-boxes N] [--mle-epochs N] [--mle-batch N] [--mle-lr X] [--mle-cache FILE]
//       [--rl-steps N] [--rl-lr X] [--rl-batch N] [--samples N] [--eval-every N]
//       [--save-tuned FILE] [--rl-first-step N]
//       [--duplicate-weight X] [--confidence-weight X] [--confidence-lr-scale X]
//       [--confidence-only]
//       [--class-alternatives N] [--nms-diagnostic] [--skip-detection] [--skip-classifier]
//       [--cls-train N] [--cls-epochs N] [--cls-steps N] [--cls-lr X]
//
// --mle-cache reuses (or writes) the MLE detector, so the tuning stage can be
// rerun alone. --max-boxes (Pix2SeqArch.max_boxes) lets the decoder emit more
// boxes than a scene holds (Pix2Seq emits up to 100 on COCO), room for the
// extra guesses reward tuning is known to add. --confidence-weight weighs the
// loss that teaches the confidence head each sampled box's IoU (default 0.3,
// big_vision's; 0 leaves it untrained, and boxes ranked by class alone).
// --confidence-lr-scale multiplies --rl-lr for the confidence head alone
// (default 1, the paper's single rate): the head starts at zero when tuning
// starts, while the rest of the detector is trained.
// --confidence-only is a probe: it trains the confidence head alone (at
// --rl-lr), the rest of the detector frozen, to measure what ranking by
// predicted IoU can gain on its own.
// --save-tuned writes the reward-tuned detector; to continue tuning, pass that
// file as --mle-cache and the steps done as --rl-first-step, so batches and
// samples continue the same random streams (AdamW's moments start afresh;
// steps in the log and the plot count from the continuation's start). The
// result table also ranks the tuned detector's boxes by class alone, which
// separates what ranking by predicted IoU gained from what decoding gained.
// --class-alternatives N adds rows for a diagnostic: the MLE and tuned
// detectors' greedy boxes each copied with the next N classes, scored by
// their class probability: the wrong-class guesses the reward leaves free.
// --nms-diagnostic adds rows for the MLE and tuned detectors' greedy boxes
// after class-wise non-maximum suppression: what the boxes tuning adds are
// worth once their duplicates are gone.

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/image_data.h"
#include "common/png_image.h"
#include "common/runtime.h"
#include "models/lr_schedule.h"
#include "models/model_arch.h"
#include "models/optimizer.h"
#include "models/reward_tuning.h"
#include "models/rewards.h"
#include "server/jobs/reward_tuning_jobs.h"

namespace offsite {
namespace {

struct Args {
  uint64_t seed = 0;
  int threads = 0;
  std::string out = ".";
  int64_t train_scenes = 60000;
  int64_t test_scenes = 1000;
  int64_t canvas = 32;
  int64_t min_objects = 1;
  int64_t max_objects = 3;
  double min_scale = 0.4;
  double max_scale = 0.7;
  int64_t max_boxes = 0;  // 0: max_objects, the job's choice.
  int64_t mle_epochs = 10;
  int64_t mle_batch = 16;
  double mle_lr = 1e-3;
  std::string mle_cache;
  int64_t rl_steps = 300;
  int64_t rl_first_step = 0;
  std::string save_tuned;
  double rl_lr = 3e-5;
  int64_t rl_batch = 16;
  int64_t samples = 8;
  int64_t eval_every = 50;
  double duplicate_weight = kDefaultDuplicateWeight;
  double confidence_weight = ReinforceOptions{}.confidence_weight;
  double confidence_lr_scale = 1;
  bool confidence_only = false;
  int64_t class_alternatives = 0;
  bool nms_diagnostic = false;
  bool detection = true;
  bool classifier = true;
  int64_t cls_train = 6000;
  int64_t cls_epochs = 2;
  int64_t cls_steps = 200;
  double cls_lr = 1e-4;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Check(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.ToString().c_str());
    std::exit(1);
  }
}

template <typename T>
T Value(absl::StatusOr<T> value) {
  Check(value.status());
  return *std::move(value);
}

// The MLE cache and --save-tuned files: a detector --mle-cache can read back.
void WriteDetector(Pix2SeqImpl& model, const std::string& path) {
  torch::serialize::OutputArchive archive;
  Check(SavePix2Seq(model, archive));
  Check(WriteArchiveFile(archive, path));
}

void PrintDetection(const char* name, const DetectorEvaluation& e) {
  std::printf("| %-22s | %6.1f | %6.1f | %6.1f | %6.1f | %7.3f | %5.2f |\n", name,
              100 * e.metrics.map, 100 * e.metrics.map50, 100 * e.metrics.recall,
              100 * e.metrics.duplicate_rate, e.mean_reward, e.mean_length);
}

// What the diagnostics below report for post-processed greedy boxes
// (predictions[s] for test scene s): ScorePredictions' metrics and mean
// reward, and the length as if the boxes had been emitted (five tokens per
// box and the EOS).
DetectorEvaluation EvaluatePredictions(const std::vector<std::vector<ScoredBox>>& predictions,
                                       const Scenes& scenes, const RewardFn& reward) {
  DetectorEvaluation out = Value(ScorePredictions(predictions, scenes, reward));
  double length_sum = 0;
  for (const std::vector<ScoredBox>& boxes : predictions) {
    length_sum += BoxTokenizer::kTokensPerObject * static_cast<double>(boxes.size()) + 1;
  }
  out.mean_length = length_sum / static_cast<double>(predictions.size());
  return out;
}

// A diagnostic, not a method: greedy decoding plus, for every box, copies
// with the next `extra` most probable classes, each scored by its own class
// probability (times the box's predicted IoU). The reward neither pays nor
// charges for a box of the wrong class, so such copies are what it leaves
// free to learn; this measures how much mAP they could buy.
DetectorEvaluation EvaluateWithClassAlternatives(Pix2SeqImpl& model, const Scenes& scenes,
                                                 const RewardFn& reward, int64_t extra) {
  model.eval();
  torch::NoGradGuard no_grad;
  const BoxTokenizer& tokenizer = model.tokenizer();
  std::vector<std::vector<ScoredBox>> predictions;
  const int64_t n = scenes.images.size(0), batch = 100;
  for (int64_t start = 0; start < n; start += batch) {
    const torch::Tensor images = scenes.images.slice(0, start, std::min(n, start + batch));
    const SampledSequences greedy = Greedy(model, images);
    const std::vector<std::vector<ScoredBox>> scored = DecodeScoredBoxes(tokenizer, greedy);
    // The class distribution at every output position, from one teacher-forced pass.
    const torch::Tensor class_probs =
        model.Decode(model.Encode(images), ShiftRight(model, greedy.tokens))
            .slice(2, tokenizer.num_bins(), tokenizer.eos())
            .softmax(2)
            .contiguous();
    const torch::Tensor top = std::get<1>(class_probs.topk(extra + 1, 2)).contiguous();
    for (int64_t i = 0; i < images.size(0); ++i) {
      std::vector<ScoredBox> boxes = scored[i];
      for (size_t j = 0; j < scored[i].size(); ++j) {
        const int64_t position = BoxTokenizer::kTokensPerObject * static_cast<int64_t>(j) + 4;
        // The greedy box's score is P(class) x confidence; keep that factor.
        const double confidence =
            scored[i][j].score / class_probs[i][position].max().item<double>();
        int64_t copies = 0;
        for (int64_t k = 0; k <= extra && copies < extra; ++k) {
          const int64_t label = top[i][position][k].item<int64_t>();
          if (label == scored[i][j].box.label) continue;
          ++copies;
          ScoredBox copy = scored[i][j];
          copy.box.label = label;
          copy.score = class_probs[i][position][label].item<double>() * confidence;
          boxes.push_back(copy);
        }
      }
      predictions.push_back(std::move(boxes));
    }
  }
  return EvaluatePredictions(predictions, scenes, reward);
}

// A diagnostic for the duplicates reward tuning adds: the greedy boxes after
// class-wise non-maximum suppression (highest score first, a box dropped when
// its IoU with a kept box of its class is at least 0.5): the post-processing
// the paper sets out to make unnecessary, here a measure of what the extra
// boxes find once their duplicates no longer crowd the ranking.
DetectorEvaluation EvaluateWithNms(Pix2SeqImpl& model, const Scenes& scenes,
                                   const RewardFn& reward) {
  model.eval();
  torch::NoGradGuard no_grad;
  std::vector<std::vector<ScoredBox>> predictions;
  const int64_t n = scenes.images.size(0), batch = 100;
  for (int64_t start = 0; start < n; start += batch) {
    const SampledSequences greedy =
        Greedy(model, scenes.images.slice(0, start, std::min(n, start + batch)));
    for (std::vector<ScoredBox>& boxes : DecodeScoredBoxes(model.tokenizer(), greedy)) {
      std::stable_sort(boxes.begin(), boxes.end(),
                       [](const ScoredBox& a, const ScoredBox& b) { return a.score > b.score; });
      std::vector<ScoredBox> kept;
      for (const ScoredBox& box : boxes) {
        const bool suppressed = std::any_of(kept.begin(), kept.end(), [&](const ScoredBox& k) {
          return k.box.label == box.box.label && Iou(k.box, box.box) >= 0.5;
        });
        if (!suppressed) kept.push_back(box);
      }
      predictions.push_back(std::move(kept));
    }
  }
  return EvaluatePredictions(predictions, scenes, reward);
}

// --- A line plot in a pixel buffer. ---------------------------------------

struct Canvas {
  int width, height;
  std::vector<uint8_t> pixels;  // RGB
  Canvas(int w, int h) : width(w), height(h), pixels(static_cast<size_t>(w) * h * 3, 255) {}
  void Set(int x, int y, const uint8_t rgb[3]) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    for (int c = 0; c < 3; ++c) pixels[(static_cast<size_t>(y) * width + x) * 3 + c] = rgb[c];
  }
  void Line(int x0, int y0, int x1, int y1, const uint8_t rgb[3], int thickness = 1) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    while (true) {
      for (int t = 0; t < thickness; ++t) {
        Set(x0, y0 + t, rgb);
        Set(x0 + t, y0, rgb);
      }
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
};

struct Series {
  std::vector<double> x, y;
  uint8_t rgb[3];
};

// Axes box, light grid lines at every 0.1 of y and every 100 steps of x, and
// each series as a polyline. Returns the y range drawn.
std::pair<double, double> Plot(const std::string& path, const std::vector<Series>& series,
                               double x_max) {
  const int w = 800, h = 480, left = 50, right = 20, top = 20, bottom = 40;
  Canvas canvas(w, h);
  double lo = 1e9, hi = -1e9;
  for (const Series& s : series) {
    for (double v : s.y) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  lo = std::floor(lo * 10) / 10;
  hi = std::ceil(hi * 10) / 10;
  if (hi <= lo) hi = lo + 0.1;
  auto px = [&](double x) { return left + static_cast<int>((w - left - right) * x / x_max); };
  auto py = [&](double y) {
    return h - bottom - static_cast<int>((h - top - bottom) * (y - lo) / (hi - lo));
  };
  const uint8_t grid[3] = {220, 220, 220}, axis[3] = {0, 0, 0};
  for (double y = lo; y <= hi + 1e-9; y += 0.1) canvas.Line(left, py(y), w - right, py(y), grid);
  for (double x = 0; x <= x_max + 1e-9; x += 100) canvas.Line(px(x), top, px(x), h - bottom, grid);
  canvas.Line(left, top, left, h - bottom, axis);
  canvas.Line(left, h - bottom, w - right, h - bottom, axis);
  for (const Series& s : series) {
    for (size_t i = 1; i < s.x.size(); ++i) {
      canvas.Line(px(s.x[i - 1]), py(s.y[i - 1]), px(s.x[i]), py(s.y[i]), s.rgb, 2);
    }
  }
  Check(WritePng(path, canvas.pixels.data(), w, h, 3));
  return {lo, hi};
}

// --- 1. Detection. --------------------------------------------------------

void RunDetection(const Args& args) {
  v1::SceneData scene_spec;
  scene_spec.set_train_scenes(static_cast<int32_t>(args.train_scenes));
  scene_spec.set_test_scenes(static_cast<int32_t>(args.test_scenes));
  scene_spec.set_seed(args.seed);
  // Shrunk to fit a shared 2-core CPU (see docs/results/reward_tuning.md): 32 px
  // canvases with 1-3 items of 11-20 px, instead of the jobs' 64 px and 1-4.
  scene_spec.set_canvas_size(static_cast<int32_t>(args.canvas));
  scene_spec.set_min_objects(static_cast<int32_t>(args.min_objects));
  scene_spec.set_max_objects(static_cast<int32_t>(args.max_objects));
  scene_spec.set_min_scale(args.min_scale);
  scene_spec.set_max_scale(args.max_scale);
  scene_spec = ResolveSceneData(scene_spec);
  double t0 = Now();
  SceneSet data = Value(LoadScenes(scene_spec, torch::kCPU));
  std::printf("scenes: %lld train, %lld test, %lld classes, %lld px (%.1f s)\n",
              static_cast<long long>(data.train.images.size(0)),
              static_cast<long long>(data.test.images.size(0)),
              static_cast<long long>(data.num_classes),
              static_cast<long long>(scene_spec.canvas_size()), Now() - t0);
  // An 8x8 memory grid (stem 2, two stages of 32 and 64 channels) and a decoder
  // of width 64: the sampling cost is dominated by cross-attention on the memory.
  v1::Pix2SeqArch arch;
  for (int32_t depth : {1, 1}) arch.add_encoder_depths(depth);
  for (int32_t dim : {32, 64}) arch.add_encoder_dims(dim);
  arch.set_encoder_stem_stride(2);
  arch.set_decoder_layers(2);
  arch.set_decoder_width(64);
  arch.set_decoder_heads(4);
  arch.set_coordinate_bins(static_cast<int32_t>(args.canvas));
  arch.set_max_boxes(static_cast<int32_t>(args.max_boxes));
  const Pix2SeqConfig config =
      Value(ResolvePix2SeqConfig(arch, scene_spec, data.num_classes, "arch"));
  const RewardFn reward = Value(MakeReward("detection", [&] {
    RewardOptions options;
    options.detection.duplicate_weight = args.duplicate_weight;
    return options;
  }()));

  Pix2Seq model{nullptr};
  const bool cached = !args.mle_cache.empty() && std::filesystem::exists(args.mle_cache);
  if (cached) {
    torch::serialize::InputArchive archive;
    Check(ReadArchiveFile(args.mle_cache, &archive));
    model = Value(LoadPix2Seq(archive));
    std::printf("MLE detector read from %s\n", args.mle_cache.c_str());
  } else {
    torch::manual_seed(args.seed);
    model = Value(MakePix2Seq(config));
    auto optimizer = MakeAdamW(*model, args.mle_lr, 0.05, 0.999, /*exclude_grn=*/true);
    const int64_t n = data.train.images.size(0);
    const int64_t steps_per_epoch = (n + args.mle_batch - 1) / args.mle_batch;
    const int64_t total = steps_per_epoch * args.mle_epochs;
    t0 = Now();
    for (int64_t epoch = 0; epoch < args.mle_epochs; ++epoch) {
      torch::Generator order = at::detail::createCPUGenerator(args.seed * 1000003 + epoch);
      const torch::Tensor perm = torch::randperm(n, order, torch::kLong);
      double loss = 0;
      for (int64_t s = 0; s < steps_per_epoch; ++s) {
        const int64_t global = epoch * steps_per_epoch + s;
        SetLearningRate(*optimizer, WarmupCosine(global, steps_per_epoch, total, args.mle_lr));
        loss += Value(DetectorMleStep(
            *model, *optimizer, data.train,
            perm.slice(0, s * args.mle_batch, std::min(n, (s + 1) * args.mle_batch)),
            args.seed * 1000003 + epoch));
      }
      std::fprintf(stderr, "  MLE epoch %lld/%lld loss %.4f (%.0f s)\n",
                   static_cast<long long>(epoch + 1), static_cast<long long>(args.mle_epochs),
                   loss / steps_per_epoch, Now() - t0);
      if ((epoch + 1) % 5 == 0 && epoch + 1 < args.mle_epochs) {
        DetectorEvaluation e = Value(EvaluateDetector(*model, data.test, reward));
        std::fprintf(stderr, "    test mAP %.1f mAP50 %.1f recall %.1f\n", 100 * e.metrics.map,
                     100 * e.metrics.map50, 100 * e.metrics.recall);
      }
    }
    std::printf("MLE: %lld epochs of %lld steps, batch %lld, peak lr %g: %.0f s\n",
                static_cast<long long>(args.mle_epochs), static_cast<long long>(steps_per_epoch),
                static_cast<long long>(args.mle_batch), args.mle_lr, Now() - t0);
    if (!args.mle_cache.empty()) {
      WriteDetector(*model, args.mle_cache);
    }
  }
  t0 = Now();
  const DetectorEvaluation before = Value(EvaluateDetector(*model, data.test, reward));
  std::printf("greedy evaluation of %lld test scenes: %.1f s\n",
              static_cast<long long>(data.test.images.size(0)), Now() - t0);
  const DetectorEvaluation before_nms =
      args.nms_diagnostic ? EvaluateWithNms(*model, data.test, reward) : DetectorEvaluation{};
  const DetectorEvaluation before_alternatives =
      args.class_alternatives > 0
          ? EvaluateWithClassAlternatives(*model, data.test, reward, args.class_alternatives)
          : DetectorEvaluation{};

  // REINFORCE.
  // --confidence-only is a probe, not the method: the decoder stays as MLE
  // left it and only the confidence head learns, which measures what ranking
  // alone can gain.
  std::unique_ptr<torch::optim::Optimizer> optimizer =
      args.confidence_only
          ? std::make_unique<torch::optim::AdamW>(
                std::vector<torch::Tensor>{model->named_parameters()["confidence.weight"],
                                           model->named_parameters()["confidence.bias"]},
                torch::optim::AdamWOptions(args.rl_lr).weight_decay(0))
          : MakeAdamW(
                *model, args.rl_lr, /*weight_decay=*/0, 0.999, false, [&](const std::string& name) {
                  return absl::StartsWith(name, "confidence.") ? args.confidence_lr_scale : 1.0;
                });
  ReinforceOptions options;
  options.samples_per_input = args.samples;
  options.confidence_weight = args.confidence_weight;
  Series sampled{{}, {}, {200, 60, 40}}, greedy{{0}, {before.mean_reward}, {30, 90, 200}};
  std::vector<double> window;
  const int64_t n = data.train.images.size(0);
  t0 = Now();
  for (int64_t step = 0; step < args.rl_steps; ++step) {
    at::Generator generator =
        at::detail::createCPUGenerator(args.seed * 1000003 + args.rl_first_step + step);
    const torch::Tensor index =
        torch::randperm(n, generator, torch::kLong).slice(0, 0, std::min(n, args.rl_batch));
    std::vector<std::vector<Box>> truth;
    for (int64_t i = 0; i < index.size(0); ++i) {
      truth.push_back(data.train.objects[index.data_ptr<int64_t>()[i]]);
    }
    const ReinforceStepStats stats =
        Value(DetectorReinforceStep(*model, *optimizer, data.train.images.index_select(0, index),
                                    truth, reward, options, generator));
    // The optimizer clears only the head's gradients; the frozen decoder's
    // would otherwise pile up, unused.
    if (args.confidence_only) model->zero_grad();
    window.push_back(stats.mean_reward);
    if ((step + 1) % 10 == 0) {
      double mean = 0;
      for (double r : window) mean += r;
      sampled.x.push_back(step + 1);
      sampled.y.push_back(mean / window.size());
      window.clear();
      std::fprintf(stderr,
                   "  RL step %lld sampled reward %.3f entropy %.3f length %.2f"
                   " confidence loss %.3f (%.0f s)\n",
                   static_cast<long long>(step + 1), sampled.y.back(), stats.entropy,
                   stats.mean_length, stats.confidence_loss, Now() - t0);
    }
    if ((step + 1) % args.eval_every == 0 || step + 1 == args.rl_steps) {
      DetectorEvaluation e = Value(EvaluateDetector(*model, data.test, reward));
      greedy.x.push_back(step + 1);
      greedy.y.push_back(e.mean_reward);
      std::fprintf(stderr, "    test greedy reward %.3f mAP %.1f mAP50 %.1f recall %.1f dup %.1f\n",
                   e.mean_reward, 100 * e.metrics.map, 100 * e.metrics.map50,
                   100 * e.metrics.recall, 100 * e.metrics.duplicate_rate);
    }
  }
  const double rl_seconds = Now() - t0;
  if (!args.save_tuned.empty()) {
    WriteDetector(*model, args.save_tuned);
  }
  const DetectorEvaluation after = Value(EvaluateDetector(*model, data.test, reward));
  // The same greedy boxes ranked without the confidence head, to tell what
  // tuning the decoder gained from what ranking by predicted IoU gained.
  const DetectorEvaluation after_class_only =
      Value(EvaluateDetector(*model, data.test, reward, 100, BoxRanking::kClassOnly));

  std::printf("\nDetection, %lld test scenes (greedy decoding), seed %llu\n",
              static_cast<long long>(data.test.images.size(0)),
              static_cast<unsigned long long>(args.seed));
  std::printf(
      "| model                  | mAP    | mAP@.5 | recall | dup %%  | reward  | len   |\n");
  std::printf("|------------------------|--------|--------|--------|--------|---------|-------|\n");
  PrintDetection("MLE", before);
  PrintDetection("MLE + reward tuning", after);
  PrintDetection("  ranked by class only", after_class_only);
  if (args.class_alternatives > 0) {
    const std::string label = absl::StrCat(", ", args.class_alternatives, " more classes");
    std::printf("rows below: every greedy box copied with its next %lld classes (a diagnostic)\n",
                static_cast<long long>(args.class_alternatives));
    PrintDetection(absl::StrCat("MLE", label).c_str(), before_alternatives);
    PrintDetection(
        absl::StrCat("tuned", label).c_str(),
        EvaluateWithClassAlternatives(*model, data.test, reward, args.class_alternatives));
  }
  if (args.nms_diagnostic) {
    std::printf("rows below: greedy boxes after class-wise NMS at IoU 0.5 (a diagnostic)\n");
    PrintDetection("MLE, NMS", before_nms);
    PrintDetection("tuned, NMS", EvaluateWithNms(*model, data.test, reward));
  }
  std::printf(
      "reward tuning: %lld steps, batch %lld x K=%lld, lr %g, duplicate weight %g,"
      " confidence weight %g (lr x%g): %.0f s\n",
      static_cast<long long>(args.rl_steps), static_cast<long long>(args.rl_batch),
      static_cast<long long>(args.samples), args.rl_lr, args.duplicate_weight,
      args.confidence_weight, args.confidence_lr_scale, rl_seconds);
  std::printf("mAP change: %+.1f points\n", 100 * (after.metrics.map - before.metrics.map));
  const std::string png =
      args.out + "/reward_tuning_curve_seed" + std::to_string(args.seed) + ".png";
  const auto [lo, hi] = Plot(png, {sampled, greedy}, static_cast<double>(args.rl_steps));
  std::printf(
      "plot: %s (x: step 0..%lld, grid every 100; y: reward %.1f..%.1f, grid every 0.1;"
      " red: mean sampled reward per 10 steps, blue: greedy reward on the test scenes)\n",
      png.c_str(), static_cast<long long>(args.rl_steps), lo, hi);
  std::printf("curve (step, greedy test reward):");
  for (size_t i = 0; i < greedy.x.size(); ++i) std::printf(" %.0f:%.3f", greedy.x[i], greedy.y[i]);
  std::printf("\n");
}

// --- 2. Cost matrix. ------------------------------------------------------

void PrintClassifier(const char* name, const ClassifierEvaluation& e, bool bayes) {
  // prediction_share counts argmax decisions, so the Bayes row has none.
  const std::string shirt = bayes ? "-" : absl::StrCat(100 * e.prediction_share[6]);
  std::printf("| %-34s | %6.2f | %7.4f | %5s |\n", name,
              100 * (bayes ? e.bayes_accuracy : e.accuracy),
              bayes ? e.bayes_mean_reward : e.mean_reward, shirt.c_str());
}

void RunClassifier(const Args& args) {
  v1::ImageData spec;
  spec.set_train_subset(static_cast<int32_t>(args.cls_train));
  ImageDataSet data = Value(LoadImageData(spec, torch::kCPU));
  v1::ConvNextV2Arch arch;
  arch.add_depths(1);
  arch.add_depths(1);
  arch.add_depths(2);
  arch.add_dims(24);
  arch.add_dims(48);
  arch.add_dims(96);
  const ConvNextV2Config config = Value(ResolveArch(arch, 1, 10));
  torch::manual_seed(args.seed);
  ConvNextV2 model = Value(MakeConvNextV2(config));
  const int64_t n = data.train_images.size(0), batch = 128;
  const int64_t steps_per_epoch = (n + batch - 1) / batch;
  auto optimizer = MakeAdamW(*model, 2e-3, 0.05, 0.999, true);
  double t0 = Now();
  for (int64_t epoch = 0; epoch < args.cls_epochs; ++epoch) {
    torch::Generator order = at::detail::createCPUGenerator(args.seed * 1000003 + epoch);
    const torch::Tensor perm = torch::randperm(n, order, torch::kLong);
    model->train();
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      SetLearningRate(*optimizer, WarmupCosine(epoch * steps_per_epoch + s, steps_per_epoch / 2,
                                               steps_per_epoch * args.cls_epochs, 2e-3));
      const torch::Tensor index = perm.slice(0, s * batch, std::min(n, (s + 1) * batch));
      torch::Tensor loss = torch::nn::functional::cross_entropy(
          model->forward(data.train_images.index_select(0, index)),
          data.train_labels.index_select(0, index));
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
    }
  }
  std::printf(
      "\nclassifier: ConvNeXt V2 depths 1,1,2 dims 24,48,96 on %lld images, %lld epochs: "
      "%.0f s\n",
      static_cast<long long>(n), static_cast<long long>(args.cls_epochs), Now() - t0);

  // Missing a shirt (class 6) costs 10; any other mistake costs 1.
  RewardOptions reward_options;
  for (int i = 0; i < 10; ++i) {
    reward_options.cost_matrix.emplace_back(10, i == 6 ? 10.0 : 1.0);
    reward_options.cost_matrix.back()[i] = 0;
  }
  const RewardFn reward = Value(MakeReward("cost_matrix", reward_options));
  const LogitsFn logits = [&](const at::Tensor& x) { return model->forward(x); };
  model->eval();
  const ClassifierEvaluation before =
      Value(EvaluateClassifier(logits, data.test_images, data.test_labels, reward, 10));

  auto tune = MakeAdamW(*model, args.cls_lr, 0, 0.999, false);
  ReinforceOptions options;
  options.samples_per_input = args.samples;
  t0 = Now();
  for (int64_t step = 0; step < args.cls_steps; ++step) {
    at::Generator generator = at::detail::createCPUGenerator(args.seed * 1000003 + step);
    const torch::Tensor index = torch::randperm(n, generator, torch::kLong).slice(0, 0, 64);
    model->train();
    const ReinforceStepStats stats = Value(ClassifierReinforceStep(
        logits, *tune, data.train_images.index_select(0, index),
        data.train_labels.index_select(0, index), reward, options, generator));
    if ((step + 1) % 50 == 0) {
      std::fprintf(stderr, "  cost-matrix RL step %lld sampled reward %.3f entropy %.3f\n",
                   static_cast<long long>(step + 1), stats.mean_reward, stats.entropy);
    }
  }
  const double seconds = Now() - t0;
  model->eval();
  const ClassifierEvaluation after =
      Value(EvaluateClassifier(logits, data.test_images, data.test_labels, reward, 10));
  std::printf(
      "cost matrix: missing a shirt (class 6) costs 10, other mistakes 1; reward = -cost;"
      " %lld test images\n",
      static_cast<long long>(data.test_images.size(0)));
  std::printf("| decision                           | acc %%  | reward  | shirt%% |\n");
  std::printf("|------------------------------------|--------|---------|-------|\n");
  PrintClassifier("MLE argmax", before, false);
  PrintClassifier("Bayes rule on MLE probabilities", before, true);
  PrintClassifier("reward-tuned argmax", after, false);
  std::printf("reward tuning: %lld steps, batch 64 x K=%lld, lr %g: %.0f s\n",
              static_cast<long long>(args.cls_steps), static_cast<long long>(args.samples),
              args.cls_lr, seconds);
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) {
  offsite::Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--skip-detection") {
      args.detection = false;
      continue;
    }
    if (flag == "--skip-classifier") {
      args.classifier = false;
      continue;
    }
    if (flag == "--nms-diagnostic") {
      args.nms_diagnostic = true;
      continue;
    }
    if (flag == "--confidence-only") {
      args.confidence_only = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "flag %s needs a value\n", flag.c_str());
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "--seed")
      args.seed = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--threads")
      args.threads = std::atoi(value.c_str());
    else if (flag == "--out")
      args.out = value;
    else if (flag == "--train-scenes")
      args.train_scenes = std::atoll(value.c_str());
    else if (flag == "--test-scenes")
      args.test_scenes = std::atoll(value.c_str());
    else if (flag == "--canvas")
      args.canvas = std::atoll(value.c_str());
    else if (flag == "--min-objects")
      args.min_objects = std::atoll(value.c_str());
    else if (flag == "--max-objects")
      args.max_objects = std::atoll(value.c_str());
    else if (flag == "--min-scale")
      args.min_scale = std::atof(value.c_str());
    else if (flag == "--max-scale")
      args.max_scale = std::atof(value.c_str());
    else if (flag == "--max-boxes")
      args.max_boxes = std::atoll(value.c_str());
    else if (flag == "--mle-epochs")
      args.mle_epochs = std::atoll(value.c_str());
    else if (flag == "--mle-batch")
      args.mle_batch = std::atoll(value.c_str());
    else if (flag == "--mle-lr")
      args.mle_lr = std::atof(value.c_str());
    else if (flag == "--mle-cache")
      args.mle_cache = value;
    else if (flag == "--rl-steps")
      args.rl_steps = std::atoll(value.c_str());
    else if (flag == "--rl-first-step")
      args.rl_first_step = std::atoll(value.c_str());
    else if (flag == "--save-tuned")
      args.save_tuned = value;
    else if (flag == "--rl-lr")
      args.rl_lr = std::atof(value.c_str());
    else if (flag == "--rl-batch")
      args.rl_batch = std::atoll(value.c_str());
    else if (flag == "--samples")
      args.samples = std::atoll(value.c_str());
    else if (flag == "--eval-every")
      args.eval_every = std::atoll(value.c_str());
    else if (flag == "--duplicate-weight")
      args.duplicate_weight = std::atof(value.c_str());
    else if (flag == "--class-alternatives")
      args.class_alternatives = std::atoll(value.c_str());
    else if (flag == "--confidence-weight")
      args.confidence_weight = std::atof(value.c_str());
    else if (flag == "--confidence-lr-scale")
      args.confidence_lr_scale = std::atof(value.c_str());
    else if (flag == "--cls-train")
      args.cls_train = std::atoll(value.c_str());
    else if (flag == "--cls-epochs")
      args.cls_epochs = std::atoll(value.c_str());
    else if (flag == "--cls-steps")
      args.cls_steps = std::atoll(value.c_str());
    else if (flag == "--cls-lr")
      args.cls_lr = std::atof(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  offsite::ConfigureThreads(args.threads);
  std::printf("%s\n", offsite::RuntimeSummary().c_str());
  std::printf("openblas core: %s\n", offsite::OpenBlasCoreName().c_str());
  const double start = offsite::Now();
  if (args.detection) offsite::RunDetection(args);
  if (args.classifier) offsite::RunClassifier(args);
  std::printf("total: %.0f s\n", offsite::Now() - start);
  return 0;
}
