#ifndef OFFSITE_COMMON_DETECTION_SCENES_H_
#define OFFSITE_COMMON_DETECTION_SCENES_H_

// Small object-detection scenes made from a classification data set
// (Fashion-MNIST): a blank square canvas holding a few items, each resized and
// placed at random, with the class and box of each item as ground truth. The
// small-scale twin of COCO for the "Tuning computer vision models with task
// rewards" experiments.
//
// Scenes are a pure function of (images, labels, count, options): scene s is
// drawn from its own random stream seeded by (options.seed, s), so the same
// seed gives identical scenes and a longer run extends a shorter one. Items
// come from the split passed in, so train scenes are built from the train
// split and test scenes from the test split.
//
// Example:
//   OFFSITE_ASSIGN_OR_RETURN(LabeledImages test, LoadIdxDataset(...));
//   SceneOptions options;
//   options.seed = 7;
//   OFFSITE_ASSIGN_OR_RETURN(Scenes scenes,
//                            GenerateScenes(test.images, test.labels, 1000, options));
//   // scenes.images: float32 [1000, 1, 64, 64]; scenes.objects[s]: 1-4 boxes.

#include <ATen/core/Tensor.h>  // at::Tensor is torch::Tensor, without all of torch.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace offsite {

// An axis-aligned box with a class, in continuous pixel coordinates: pixel
// (row r, column c) covers [c, c + 1) x [r, r + 1), so a box holding columns
// 3..5 has x0 = 3, x1 = 6. x grows to the right, y downwards.
struct Box {
  float x0 = 0;
  float y0 = 0;
  float x1 = 0;
  float y1 = 0;
  int64_t label = 0;
};

bool operator==(const Box& a, const Box& b);
inline bool operator!=(const Box& a, const Box& b) { return !(a == b); }

// Intersection over union of the two boxes' areas, ignoring labels; 0 when the
// union is empty. A box with x1 < x0 or y1 < y0 has no area.
double Iou(const Box& a, const Box& b);

struct SceneOptions {
  // Canvas side in pixels; scenes are canvas_size x canvas_size.
  int64_t canvas_size = 64;
  // Each scene holds a uniformly drawn number of items in [min, max].
  int64_t min_objects = 1;
  int64_t max_objects = 4;
  // Each item's side is round(scale * source side), scale uniform in
  // [min_scale, max_scale]; e.g. 0.5..1.0 of 28 px gives 14..28 px items.
  double min_scale = 0.5;
  double max_scale = 1.0;
  // Ground-truth boxes of one scene overlap at most this much (IoU); an item
  // that would overlap more is redrawn (item, scale and position).
  double max_iou = 0.3;
  // Draws per item before giving up on the scene's placement.
  int64_t max_placement_tries = 100;
  // A pixel of a resized item counts as ink (inside its box) above this value;
  // boxes are the tight extent of ink, not the pasted square.
  float ink_threshold = 0.1f;
  uint64_t seed = 0;
};

// OK, or InvalidArgument naming the offending field.
absl::Status ValidateSceneOptions(const SceneOptions& options);

struct Scenes {
  at::Tensor images;                      // float32 [count, 1, canvas, canvas], values in [0, 1].
  std::vector<std::vector<Box>> objects;  // objects[s]: the items of scene s, in paste order.
  std::vector<std::vector<int64_t>> sources;  // sources[s][i]: index into `images` of item i.
};

// Builds `count` scenes from `images` (N, 1, H, W) or (N, H, W), uint8 in
// [0, 255] or floating point in [0, 1], and `labels` (N) of any integer type.
// Each item is resized with bilinear interpolation (align_corners = false) and
// pasted at an integer offset with max-blending, so overlapping items keep the
// brighter pixel. Items with no ink above the threshold are redrawn.
//
// InvalidArgument for bad options, mismatched or empty inputs, items larger
// than the canvas, or when a scene cannot place min_objects items within
// max_placement_tries draws each (loosen max_iou or the scale range).
absl::StatusOr<Scenes> GenerateScenes(const at::Tensor& images, const at::Tensor& labels,
                                      int64_t count, const SceneOptions& options);

}  // namespace offsite

#endif  // OFFSITE_COMMON_DETECTION_SCENES_H_
