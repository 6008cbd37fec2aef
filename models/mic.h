#ifndef OFFSITE_MODELS_MIC_H_
#define OFFSITE_MODELS_MIC_H_

// MIC: Masked Image Consistency for context-enhanced domain adaptation (Hoyer
// et al., CVPR 2023; lhoyer/MIC), on the self-training baseline it extends
// (an EMA teacher labels the unlabelled target images; DAFormer/DACS), for
// classification and segmentation, with the paper's ablations as switches.
//
// One training step (MicTrainingStep), for method kMic:
//   teacher <- a_t * teacher + (1 - a_t) * student, a_t = min(1 - 1/(t+1), alpha)
//   p = softmax(teacher(target)); pseudo-label y = argmax p; quality q from max p
//   loss = CE(student(source), source labels)
//        + q * CE(student(aug(target)), y)                     (self-training)
//        + w * q * CE(student(mask(aug(target))), y)            (MIC)
// kSelfTraining drops the MIC term, kSourceOnly both target terms.
//
// Example:
//   OFFSITE_ASSIGN_OR_RETURN(MicNet student, MakeMicNet(config));
//   OFFSITE_ASSIGN_OR_RETURN(MicNet teacher, MakeMicNet(config));
//   InitTeacher(*teacher, *student);
//   auto optimizer = MakeAdamW(*student, 1e-3, 0.01, 0.999, true);
//   torch::Generator generator = at::detail::createCPUGenerator(seed);
//   for (int64_t t = 0; t < steps; ++t) {
//     MicStepStats stats = MicTrainingStep(student, teacher, *optimizer, batch, t, options,
//                                          generator);
//   }
//
// No I/O here: data, files and reporting are the caller's.

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data_parallel.h"
#include "models/convnext_v2.h"

namespace offsite {

enum class MicTask { kClassification, kSegmentation };
enum class MicMethod { kSourceOnly, kSelfTraining, kMic };

// "classification" / "segmentation"; "source_only" / "self_training" / "mic".
// InvalidArgument naming the value otherwise.
absl::StatusOr<MicTask> ParseMicTask(const std::string& name);
absl::StatusOr<MicMethod> ParseMicMethod(const std::string& name);
std::string MicMethodName(MicMethod method);

struct MicOptions {
  MicTask task = MicTask::kClassification;
  MicMethod method = MicMethod::kMic;
  // EMA teacher: a_t = min(1 - 1/(t+1), ema_alpha).
  double ema_alpha = 0.999;
  // Quality weight threshold tau on the teacher's max probability.
  double tau = 0.968;
  // MIC mask: square blocks of this side (pixels), each dropped with
  // probability mask_ratio.
  int64_t mask_block_size = 4;
  double mask_ratio = 0.7;
  double mic_weight = 1.0;
  // Ablations. no_masking: the MIC term sees the augmented target unmasked.
  // no_ema: the student labels the target itself (no gradient through the
  // labels). no_quality_weight: q = 1. no_augmentation: no colour jitter / blur
  // on the student's target input.
  bool no_masking = false;
  bool no_ema = false;
  bool no_quality_weight = false;
  bool no_augmentation = false;
  // DACS/MIC augmentation: colour jitter with this probability (brightness
  // and contrast factors in [1 - s, 1 + s]), Gaussian blur with that one
  // (sigma uniform in [0.15, 1.15]).
  double jitter_probability = 0.8;
  double jitter_strength = 0.2;
  double blur_probability = 0.5;
};

// The MIC mask of N images of height x width: float (N, 1, H, W), 1 where the
// pixel is kept, 0 where dropped. The image is tiled by block x block cells
// starting at (0, 0) (cells at the right and bottom edge may be cut off); each
// cell is dropped independently with probability `ratio`, so the expected
// dropped fraction is `ratio`. Deterministic given the generator's state.
at::Tensor BlockMask(int64_t n, int64_t height, int64_t width, int64_t block, double ratio,
                     at::Generator generator);

// The paper's EMA rate at step t: min(1 - 1/(t+1), alpha); 0 at t = 0, so the
// teacher starts as a copy of the student.
double EmaAlpha(int64_t step, double alpha);

// teacher <- a * teacher + (1 - a) * student for every parameter, a =
// EmaAlpha(step, alpha); buffers are copied. Same architectures required.
void EmaUpdate(torch::nn::Module& teacher, torch::nn::Module& student, int64_t step, double alpha);

// Makes `teacher` a frozen copy of `student`: its parameters stop requiring
// gradients, so no loss ever reaches it.
void InitTeacher(torch::nn::Module& teacher, torch::nn::Module& student);

// The teacher's quality weight per sample, from softmax probabilities (N, K)
// (classification: 1 if the max probability exceeds tau, else 0) or
// (N, K, H, W) (segmentation: the fraction of the image's pixels whose max
// probability exceeds tau). float (N).
at::Tensor QualityWeight(const at::Tensor& probabilities, double tau);

// Colour jitter and blur of normalised images (N, C, H, W), each image on its
// own draw: with jitter_probability, x <- (x - mean) * contrast + mean + brightness
// shift; with blur_probability, a Gaussian blur. Deterministic given the generator.
at::Tensor MicAugment(const at::Tensor& images, const MicOptions& options, at::Generator generator);

// The networks: a ConvNeXt V2 classifier, or for segmentation ConvNeXt V2
// encoder stages with a light all-MLP decoder (SegFormer/DAFormer style): each
// stage's features projected to decoder_dim, upsampled to the first stage's
// grid and summed, then 3x3 conv + GELU, a 1x1 classifier, and bilinear
// upsampling to the input size.
struct MicNetConfig {
  MicTask task = MicTask::kClassification;
  // num_classes includes the background class for segmentation.
  ConvNextV2Config backbone;
  int64_t decoder_dim = 32;
};

class MicNetImpl : public torch::nn::Module {
 public:
  explicit MicNetImpl(const MicNetConfig& config);

  // Logits: (N, K) for classification, (N, K, H, W) for segmentation.
  at::Tensor forward(const at::Tensor& images);

  const MicNetConfig& config() const { return config_; }

 private:
  MicNetConfig config_;
  ConvNextV2 backbone_{nullptr};
  torch::nn::ModuleList projections_{nullptr};
  torch::nn::Conv2d fuse_{nullptr};
  torch::nn::Conv2d classifier_{nullptr};
};
TORCH_MODULE(MicNet);

// Validates the config (InvalidArgument naming the field) and builds the network.
absl::StatusOr<MicNet> MakeMicNet(const MicNetConfig& config);

// Model files: format tag, version, task, config and every tensor. Loading
// checks that the archive was saved from the same config.
inline constexpr int64_t kMicNetFormatVersion = 1;
absl::Status SaveMicNet(MicNet& model, torch::serialize::OutputArchive& archive);
absl::Status LoadMicNet(MicNet& model, torch::serialize::InputArchive& archive);

struct MicBatch {
  at::Tensor source_images;  // (N, C, H, W), normalised
  at::Tensor source_labels;  // (N) or (N, H, W)
  at::Tensor target_images;  // (M, C, H, W), unlabelled
};

struct MicStepStats {
  double source_loss = 0;
  double pseudo_label_loss = 0;  // weighted self-training term (0 for source-only)
  double mic_loss = 0;           // weighted MIC term (0 unless kMic)
  double confidence = 0;         // mean max probability of the labeller on the target
  double quality = 0;            // mean quality weight
  double ema_alpha = 0;          // a_t used this step
};

// One optimisation step of the student (see the top of this file). The teacher
// is EMA-updated first (not with no_ema), and never receives gradients.
// `generator` draws the masks and augmentation. `sync` (data-parallel
// training) runs between backward and the optimiser step; the step fails only
// when it does.
absl::StatusOr<MicStepStats> MicTrainingStep(MicNet& student, MicNet& teacher,
                                             torch::optim::Optimizer& optimizer,
                                             const MicBatch& batch, int64_t step,
                                             const MicOptions& options, at::Generator generator,
                                             const GradientSync& sync = nullptr);

struct MicEvaluation {
  double accuracy = 0;            // top-1 (classification) or pixel accuracy
  double miou = 0;                // segmentation: mean IoU over classes present
  std::vector<double> class_iou;  // segmentation: per class; NaN where a class never occurs
  double confidence = 0;          // mean max probability
};

// Evaluates `model` on labelled images in batches of `batch_size`.
MicEvaluation EvaluateMic(MicNet& model, const at::Tensor& images, const at::Tensor& labels,
                          int64_t batch_size = 256);

}  // namespace offsite

#endif  // OFFSITE_MODELS_MIC_H_
