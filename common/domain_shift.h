#ifndef OFFSITE_COMMON_DOMAIN_SHIFT_H_
#define OFFSITE_COMMON_DOMAIN_SHIFT_H_

// Two image domains from one labelled data set, for unsupervised domain
// adaptation (MIC): the source domain is the items as they are (light items on
// black, as Fashion-MNIST), the target domain the same classes rendered
// differently - inverted contrast, a textured, cluttered background, blur,
// noise, rescaled items - so that local appearance is ambiguous and context
// matters. Classification uses single items; segmentation uses scenes of
// several items with a per-pixel class map (0 background, 1 + item class).
//
// Everything is a pure function of its inputs and seeds: image or scene i is
// drawn from its own random stream seeded by (seed, i), so the same seed gives
// the same pixels and a longer set extends a shorter one.
//
// Also reads users' own domains from folders of PNG images (see
// LoadClassificationFolder / LoadSegmentationFolder).
//
// Example:
//   DomainShiftOptions shift;
//   shift.seed = 7;
//   at::Tensor target = RenderTargetDomain(PlaceItems(items, 32, 0.7, 1.0, 7), shift);

#include <ATen/core/Tensor.h>  // at::Tensor is torch::Tensor, without all of torch.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

// A 64-bit seed for stream `index` of `seed` (splitmix64 of both).
uint64_t StreamSeed(uint64_t seed, uint64_t index);

// How the target domain looks. Defaults as in v1::TargetDomain.
struct DomainShiftOptions {
  // Dark items on a light ground.
  bool invert = true;
  // Strength in [0, 1] of the textured background: blobs and strokes of
  // item-like brightness behind the items.
  double clutter = 0.5;
  // Standard deviation of additive Gaussian pixel noise (pixels in [0, 1]).
  double noise = 0.1;
  // Gaussian blur sigma in pixels; 0 for none.
  double blur = 0.8;
  uint64_t seed = 0;
};

// OK, or InvalidArgument naming the field ("clutter", "noise", "blur").
absl::Status ValidateDomainShift(const DomainShiftOptions& options);

// Renders `images` (N, 1, H, W), float in [0, 1], light items on black, into
// the target domain; the result has the same shape, values in [0, 1]. Pixel
// positions do not move, so a class map of the input is one of the output.
// Image i is drawn from the stream (options.seed, first_index + i).
at::Tensor RenderTargetDomain(const at::Tensor& images, const DomainShiftOptions& options,
                              int64_t first_index = 0);

// Single items (N, 1, h, w) or (N, h, w) in [0, 1] (or uint8), each resized by
// a factor drawn from [min_scale, max_scale] and placed at a random position on
// a black canvas x canvas; item i uses the stream (seed, i). float (N, 1,
// canvas, canvas). Items larger than the canvas are shrunk to fit.
at::Tensor PlaceItems(const at::Tensor& images, int64_t canvas, double min_scale, double max_scale,
                      uint64_t seed);

struct SegmentationSceneOptions {
  int64_t canvas_size = 64;
  // Items per scene, drawn uniformly in [min_objects, max_objects].
  int64_t min_objects = 2;
  int64_t max_objects = 4;
  // Item side = round(scale * source side), scale uniform in [min, max].
  double min_scale = 0.5;
  double max_scale = 1.0;
  // Pixels of a resized item above this value are the item (ink): they
  // overwrite the canvas and the class map, so later items occlude earlier ones.
  float ink_threshold = 0.2f;
  uint64_t seed = 0;
};

// OK, or InvalidArgument naming the field.
absl::Status ValidateSegmentationSceneOptions(const SegmentationSceneOptions& options);

struct SegmentationScenes {
  at::Tensor images;   // float32 [count, 1, S, S], light items on black, in [0, 1].
  at::Tensor classes;  // int64 [count, S, S]: 0 background, 1 + label of the item.
};

// `count` scenes of items from `images` (N, 1, h, w) or (N, h, w) with `labels`
// (N). Items are taken in the order of a permutation drawn from options.seed,
// cycling, so each item is used about equally often. InvalidArgument for bad
// options or empty / mismatched inputs.
absl::StatusOr<SegmentationScenes> GenerateSegmentationScenes(
    const at::Tensor& images, const at::Tensor& labels, int64_t count,
    const SegmentationSceneOptions& options);

// Users' own domains: folders of PNG images (any PNG; read as 8-bit gray).
// Images are resized to `side` x side (bilinear; masks nearest) and scaled to
// [0, 1]; they should show light items on a dark ground in the source domain,
// as the rendered data does, though nothing enforces it.
struct FolderImages {
  at::Tensor images;  // float [N, 1, side, side]
  at::Tensor labels;  // int64 [N] (classification) or [N, side, side] (segmentation)
  std::vector<std::string> class_names;
};

// Classification: `dir`/CLASS/*.png, one sub-folder per class; classes are the
// sub-folder names in byte order, labelled 0, 1, ... . When `class_names` is
// non-empty the folder must have exactly those classes (so a target folder
// matches its source). InvalidArgument naming the folder or file.
absl::StatusOr<FolderImages> LoadClassificationFolder(const std::string& dir, int64_t side,
                                                      const std::vector<std::string>& class_names);

// Segmentation: `dir`/images/NAME.png with `dir`/masks/NAME.png, the mask an
// 8-bit gray PNG whose value is the class of the pixel (0 background, 1..K).
// InvalidArgument naming the file for a missing mask, or a class value at or
// above `num_classes` (when num_classes > 0).
absl::StatusOr<FolderImages> LoadSegmentationFolder(const std::string& dir, int64_t side,
                                                    int64_t num_classes);

}  // namespace offsite

#endif  // OFFSITE_COMMON_DOMAIN_SHIFT_H_
