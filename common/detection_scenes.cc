#include "common/detection_scenes.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/splitmix64.h"

namespace offsite {
namespace {

absl::Status FieldError(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("SceneOptions.", field, ": ", problem));
}

// Draws from std::mt19937_64 by hand: the standard distributions are
// implementation-defined, and scenes must not change with the library.
class SceneRandom {
 public:
  SceneRandom(uint64_t seed, int64_t scene)
      // SplitMix64 decorrelates the per-scene seeds (seed, 0), (seed, 1), ...
      : engine_(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(scene))) {}

  // Uniform in [lo, hi], both included.
  int64_t Int(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(engine_() % static_cast<uint64_t>(hi - lo + 1));
  }
  // Uniform in [lo, hi).
  double Real(double lo, double hi) {
    return lo + (hi - lo) * static_cast<double>(engine_() >> 11) * 0x1.0p-53;
  }

 private:
  std::mt19937_64 engine_;
};

// The tight extent of ink in a size x size patch, relative to the patch;
// false if no pixel exceeds the threshold.
bool InkExtent(const float* patch, int64_t size, float threshold, int64_t* r0, int64_t* c0,
               int64_t* r1, int64_t* c1) {
  *r0 = size;
  *c0 = size;
  *r1 = -1;
  *c1 = -1;
  for (int64_t r = 0; r < size; ++r) {
    for (int64_t c = 0; c < size; ++c) {
      if (patch[r * size + c] > threshold) {
        *r0 = std::min(*r0, r);
        *r1 = std::max(*r1, r);
        *c0 = std::min(*c0, c);
        *c1 = std::max(*c1, c);
      }
    }
  }
  return *r1 >= 0;
}

}  // namespace

bool operator==(const Box& a, const Box& b) {
  return a.x0 == b.x0 && a.y0 == b.y0 && a.x1 == b.x1 && a.y1 == b.y1 && a.label == b.label;
}

double Iou(const Box& a, const Box& b) {
  const double iw = std::max(0.0, static_cast<double>(std::min(a.x1, b.x1)) - std::max(a.x0, b.x0));
  const double ih = std::max(0.0, static_cast<double>(std::min(a.y1, b.y1)) - std::max(a.y0, b.y0));
  const double inter = iw * ih;
  const double area_a =
      std::max(0.0f, a.x1 - a.x0) * static_cast<double>(std::max(0.0f, a.y1 - a.y0));
  const double area_b =
      std::max(0.0f, b.x1 - b.x0) * static_cast<double>(std::max(0.0f, b.y1 - b.y0));
  const double uni = area_a + area_b - inter;
  return uni > 0 ? inter / uni : 0.0;
}

absl::Status ValidateSceneOptions(const SceneOptions& options) {
  if (options.canvas_size < 1) return FieldError("canvas_size", "must be positive");
  if (options.min_objects < 1) return FieldError("min_objects", "must be at least 1");
  if (options.max_objects < options.min_objects) {
    return FieldError("max_objects", "must be at least min_objects");
  }
  if (!(options.min_scale > 0)) return FieldError("min_scale", "must be positive");
  if (!(options.max_scale >= options.min_scale) || !std::isfinite(options.max_scale)) {
    return FieldError("max_scale", "must be finite and at least min_scale");
  }
  if (!(options.max_iou >= 0 && options.max_iou <= 1)) {
    return FieldError("max_iou", "must be in [0, 1]");
  }
  if (options.max_placement_tries < 1) {
    return FieldError("max_placement_tries", "must be positive");
  }
  if (!(options.ink_threshold >= 0 && options.ink_threshold < 1)) {
    return FieldError("ink_threshold", "must be in [0, 1)");
  }
  return absl::OkStatus();
}

absl::StatusOr<Scenes> GenerateScenes(const at::Tensor& images, const at::Tensor& labels,
                                      int64_t count, const SceneOptions& options) {
  if (absl::Status status = ValidateSceneOptions(options); !status.ok()) return status;
  if (count < 0) return absl::InvalidArgumentError("scene count must not be negative");
  if (!images.defined() || !(images.dim() == 3 || (images.dim() == 4 && images.size(1) == 1))) {
    return absl::InvalidArgumentError("images must be (N, 1, H, W) or (N, H, W)");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels must be (N) with N = ", images.size(0), " images"));
  }
  const int64_t num_items = images.size(0);
  if (num_items == 0 && count > 0) return absl::InvalidArgumentError("no images to draw from");
  const int64_t height = images.size(images.dim() - 2);
  const int64_t width = images.size(images.dim() - 1);
  const int64_t source_side = std::max(height, width);
  const int64_t max_side = static_cast<int64_t>(std::lround(options.max_scale * source_side));
  if (max_side > options.canvas_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "items of up to ", max_side, " px do not fit a canvas of ", options.canvas_size, " px"));
  }

  // Source pixels as float [N, 1, H, W] in [0, 1].
  at::Tensor source = images.reshape({num_items, 1, height, width}).to(at::kCPU);
  source =
      images.scalar_type() == at::kByte ? source.to(at::kFloat).div(255.0) : source.to(at::kFloat);
  source = source.contiguous();
  const at::Tensor source_labels = labels.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* label_data = source_labels.data_ptr<int64_t>();

  const int64_t canvas = options.canvas_size;
  Scenes scenes;
  scenes.images = at::zeros({count, 1, canvas, canvas}, at::kFloat);
  scenes.objects.resize(count);
  scenes.sources.resize(count);
  float* canvas_data = scenes.images.data_ptr<float>();

  for (int64_t s = 0; s < count; ++s) {
    SceneRandom random(options.seed, s);
    float* scene = canvas_data + s * canvas * canvas;
    const int64_t wanted = random.Int(options.min_objects, options.max_objects);
    std::vector<Box>& boxes = scenes.objects[s];
    for (int64_t item = 0; item < wanted; ++item) {
      bool placed = false;
      for (int64_t attempt = 0; attempt < options.max_placement_tries && !placed; ++attempt) {
        const int64_t index = random.Int(0, num_items - 1);
        const double scale = random.Real(options.min_scale, options.max_scale);
        const int64_t side =
            std::max<int64_t>(1, static_cast<int64_t>(std::lround(scale * source_side)));
        const int64_t ox = random.Int(0, canvas - side);
        const int64_t oy = random.Int(0, canvas - side);
        const at::Tensor patch = at::upsample_bilinear2d(source.narrow(0, index, 1), {side, side},
                                                         /*align_corners=*/false)
                                     .clamp(0, 1)
                                     .contiguous();
        const float* patch_data = patch.data_ptr<float>();
        int64_t r0, c0, r1, c1;
        if (!InkExtent(patch_data, side, options.ink_threshold, &r0, &c0, &r1, &c1)) continue;
        Box box{static_cast<float>(ox + c0), static_cast<float>(oy + r0),
                static_cast<float>(ox + c1 + 1), static_cast<float>(oy + r1 + 1),
                label_data[index]};
        bool overlaps = false;
        for (const Box& other : boxes) {
          if (Iou(box, other) > options.max_iou) {
            overlaps = true;
            break;
          }
        }
        if (overlaps) continue;
        for (int64_t r = 0; r < side; ++r) {
          float* row = scene + (oy + r) * canvas + ox;
          for (int64_t c = 0; c < side; ++c) row[c] = std::max(row[c], patch_data[r * side + c]);
        }
        boxes.push_back(box);
        scenes.sources[s].push_back(index);
        placed = true;
      }
      if (!placed) break;
    }
    if (static_cast<int64_t>(boxes.size()) < options.min_objects) {
      return absl::InvalidArgumentError(
          absl::StrCat("scene ", s, ": placed ", boxes.size(), " of at least ", options.min_objects,
                       " items in ", options.max_placement_tries,
                       " tries each; loosen max_iou or the scale range"));
    }
  }
  return scenes;
}

}  // namespace offsite
