#include "common/domain_shift.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/png_image.h"
#include "common/splitmix64.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

namespace F = torch::nn::functional;

torch::Generator MakeGenerator(uint64_t seed, uint64_t index) {
  return at::detail::createCPUGenerator(StreamSeed(seed, index));
}

double Uniform(torch::Generator& generator, double lo, double hi) {
  return lo + (hi - lo) * torch::rand({1}, generator).item<double>();
}

int64_t UniformInt(torch::Generator& generator, int64_t lo, int64_t hi) {  // [lo, hi]
  return torch::randint(lo, hi + 1, {1}, generator).item<int64_t>();
}

// Items as float (N, 1, h, w) in [0, 1].
torch::Tensor AsItems(const torch::Tensor& images) {
  torch::Tensor items = images.dim() == 3 ? images.unsqueeze(1) : images;
  if (items.scalar_type() == torch::kUInt8) return items.to(torch::kFloat) / 255.0;
  return items.to(torch::kFloat);
}

torch::Tensor Resize(const torch::Tensor& item, int64_t side) {
  return F::interpolate(item, F::InterpolateFuncOptions()
                                  .size(std::vector<int64_t>{side, side})
                                  .mode(torch::kBilinear)
                                  .align_corners(false))
      .clamp(0, 1);
}

// Separable Gaussian blur of (N, 1, H, W) with replicated borders.
torch::Tensor GaussianBlur(const torch::Tensor& images, double sigma) {
  if (sigma <= 0) return images;
  const int64_t radius = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(2 * sigma)));
  torch::Tensor x = torch::arange(-radius, radius + 1, torch::kFloat);
  torch::Tensor kernel = torch::exp(-x * x / (2 * sigma * sigma));
  kernel = kernel / kernel.sum();
  torch::Tensor padded =
      F::pad(images.contiguous(),
             F::PadFuncOptions({radius, radius, radius, radius}).mode(torch::kReplicate));
  torch::Tensor rows = F::conv2d(padded, kernel.view({1, 1, 1, -1}));
  return F::conv2d(rows, kernel.view({1, 1, -1, 1}));
}

// A smooth random field on (H, W) in [0, 1]: noise on a coarse grid, upsampled.
torch::Tensor SmoothField(torch::Generator& generator, int64_t height, int64_t width,
                          int64_t cell) {
  const int64_t h = std::max<int64_t>(2, height / cell + 1),
                w = std::max<int64_t>(2, width / cell + 1);
  torch::Tensor coarse = torch::rand({1, 1, h, w}, generator);
  return F::interpolate(coarse, F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{height, width})
                                    .mode(torch::kBilinear)
                                    .align_corners(true));
}

// The cluttered background of one image: soft blobs plus a few straight
// strokes of item-like brightness, in [0, 1].
torch::Tensor Clutter(torch::Generator& generator, int64_t height, int64_t width) {
  torch::Tensor blobs = SmoothField(generator, height, width, 6);
  blobs = ((blobs - 0.45) * 3).clamp(0, 1);
  torch::Tensor fine = SmoothField(generator, height, width, 2);
  torch::Tensor strokes = torch::zeros({1, 1, height, width});
  const int64_t count = UniformInt(generator, 2, 4);
  for (int64_t s = 0; s < count; ++s) {
    const double value = Uniform(generator, 0.5, 1.0);
    const int64_t thickness = UniformInt(generator, 1, 2);
    if (UniformInt(generator, 0, 1) == 0) {
      const int64_t row = UniformInt(generator, 0, height - thickness);
      const int64_t begin = UniformInt(generator, 0, width / 2),
                    end = UniformInt(generator, width / 2, width);
      strokes.slice(2, row, row + thickness).slice(3, begin, end).fill_(value);
    } else {
      const int64_t column = UniformInt(generator, 0, width - thickness);
      const int64_t begin = UniformInt(generator, 0, height / 2),
                    end = UniformInt(generator, height / 2, height);
      strokes.slice(3, column, column + thickness).slice(2, begin, end).fill_(value);
    }
  }
  return torch::max(0.6 * blobs + 0.4 * fine * blobs, strokes).squeeze(0);
}

absl::Status CheckItems(const torch::Tensor& images, const torch::Tensor& labels) {
  if (!images.defined() || images.numel() == 0 || (images.dim() != 3 && images.dim() != 4)) {
    return absl::InvalidArgumentError("items: expected (N, 1, h, w) or (N, h, w) images");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0)) {
    return absl::InvalidArgumentError("items: need one label per image");
  }
  return absl::OkStatus();
}

std::vector<std::filesystem::path> PngFiles(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.is_regular_file() && entry.path().extension() == ".png")
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<torch::Tensor> ReadImage(const std::string& path, int64_t side, bool mask) {
  OFFSITE_ASSIGN_OR_RETURN(GrayImage gray, ReadPngGray(path, /*raw=*/mask));
  torch::Tensor image =
      torch::from_blob(gray.pixels.data(), {1, 1, gray.height, gray.width}, torch::kUInt8).clone();
  if (mask) {
    return F::interpolate(image.to(torch::kFloat), F::InterpolateFuncOptions()
                                                       .size(std::vector<int64_t>{side, side})
                                                       .mode(torch::kNearest))
        .to(torch::kLong)
        .view({side, side});
  }
  return Resize(image.to(torch::kFloat) / 255.0, side).view({1, side, side});
}

}  // namespace

uint64_t StreamSeed(uint64_t seed, uint64_t index) {
  return SplitMix64(SplitMix64(seed) ^ index) & 0x7fffffffffffffffULL;
}

absl::Status ValidateDomainShift(const DomainShiftOptions& options) {
  if (!(options.clutter >= 0 && options.clutter <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("clutter: ", options.clutter, " is outside [0, 1]"));
  }
  if (!(options.noise >= 0 && options.noise <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("noise: ", options.noise, " is outside [0, 1]"));
  }
  if (!(options.blur >= 0 && options.blur <= 8)) {
    return absl::InvalidArgumentError(absl::StrCat("blur: ", options.blur, " is outside [0, 8]"));
  }
  return absl::OkStatus();
}

at::Tensor RenderTargetDomain(const at::Tensor& images, const DomainShiftOptions& options,
                              int64_t first_index) {
  torch::NoGradGuard no_grad;
  torch::Tensor x = AsItems(images).cpu().contiguous();
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  torch::Tensor background = torch::empty({n, 1, h, w});
  torch::Tensor gain = torch::empty({n, 1, 1, 1});
  torch::Tensor noise = torch::empty({n, 1, h, w});
  for (int64_t i = 0; i < n; ++i) {
    torch::Generator generator = MakeGenerator(options.seed, first_index + i);
    background[i] = options.clutter * Clutter(generator, h, w);
    // Items lose some contrast: their brightness is scaled by 0.6..1.
    gain[i] = Uniform(generator, 0.6, 1.0);
    noise[i] = torch::randn({1, h, w}, generator) * options.noise;
  }
  // Items are drawn over the clutter (an item pixel of value v covers v of it).
  torch::Tensor scene = x * gain + (1 - x) * background;
  if (options.invert) scene = 1 - scene;
  scene = GaussianBlur(scene, options.blur);
  return (scene + noise).clamp(0, 1).contiguous();
}

at::Tensor PlaceItems(const at::Tensor& images, int64_t canvas, double min_scale, double max_scale,
                      uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::Tensor items = AsItems(images).cpu();
  const int64_t n = items.size(0);
  torch::Tensor out = torch::zeros({n, 1, canvas, canvas});
  for (int64_t i = 0; i < n; ++i) {
    torch::Generator generator = MakeGenerator(seed, i);
    const double scale = Uniform(generator, min_scale, max_scale);
    const int64_t side =
        std::clamp<int64_t>(std::lround(scale * std::max(items.size(2), items.size(3))), 1, canvas);
    torch::Tensor item = Resize(items.slice(0, i, i + 1), side);
    const int64_t top = UniformInt(generator, 0, canvas - side);
    const int64_t left = UniformInt(generator, 0, canvas - side);
    out[i].slice(1, top, top + side).slice(2, left, left + side).copy_(item[0]);
  }
  return out;
}

absl::Status ValidateSegmentationSceneOptions(const SegmentationSceneOptions& options) {
  if (options.canvas_size < 8 || options.canvas_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("canvas_size: ", options.canvas_size, " is outside [8, 1024]"));
  }
  if (options.min_objects < 1 || options.min_objects > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_objects: ", options.min_objects, " is outside [1, 16]"));
  }
  if (options.max_objects < options.min_objects || options.max_objects > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_objects: ", options.max_objects, " is outside [min_objects, 16]"));
  }
  if (!(options.min_scale > 0 && options.min_scale <= options.max_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_scale: ", options.min_scale, " must be in (0, max_scale]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SegmentationScenes> GenerateSegmentationScenes(
    const at::Tensor& images, const at::Tensor& labels, int64_t count,
    const SegmentationSceneOptions& options) {
  OFFSITE_RETURN_IF_ERROR(ValidateSegmentationSceneOptions(options));
  OFFSITE_RETURN_IF_ERROR(CheckItems(images, labels));
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("count: ", count, " is negative"));
  torch::NoGradGuard no_grad;
  torch::Tensor items = AsItems(images).cpu();
  torch::Tensor item_labels = labels.cpu().to(torch::kLong);
  const int64_t n = items.size(0), canvas = options.canvas_size;
  torch::Generator order_generator = MakeGenerator(options.seed, ~0ULL);
  torch::Tensor order = torch::randperm(n, order_generator, torch::kLong);
  auto order_at = order.accessor<int64_t, 1>();
  int64_t next = 0;

  SegmentationScenes scenes;
  scenes.images = torch::zeros({count, 1, canvas, canvas});
  scenes.classes = torch::zeros({count, canvas, canvas}, torch::kLong);
  for (int64_t s = 0; s < count; ++s) {
    torch::Generator generator = MakeGenerator(options.seed, s);
    const int64_t objects = UniformInt(generator, options.min_objects, options.max_objects);
    torch::Tensor image = scenes.images[s][0];
    torch::Tensor classes = scenes.classes[s];
    for (int64_t k = 0; k < objects; ++k) {
      const int64_t index = order_at[next++ % n];
      const double scale = Uniform(generator, options.min_scale, options.max_scale);
      const int64_t side = std::clamp<int64_t>(
          std::lround(scale * std::max(items.size(2), items.size(3))), 1, canvas);
      torch::Tensor item = Resize(items.slice(0, index, index + 1), side)[0][0];
      const int64_t top = UniformInt(generator, 0, canvas - side);
      const int64_t left = UniformInt(generator, 0, canvas - side);
      torch::Tensor ink = item > options.ink_threshold;
      torch::Tensor window = image.slice(0, top, top + side).slice(1, left, left + side);
      torch::Tensor class_window = classes.slice(0, top, top + side).slice(1, left, left + side);
      window.copy_(torch::where(ink, item, window));
      class_window.masked_fill_(ink, item_labels[index].item<int64_t>() + 1);
    }
  }
  return scenes;
}

absl::StatusOr<FolderImages> LoadClassificationFolder(const std::string& dir, int64_t side,
                                                      const std::vector<std::string>& class_names) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
  }
  FolderImages folder;
  std::vector<std::filesystem::path> class_dirs;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.is_directory()) class_dirs.push_back(entry.path());
  }
  std::sort(class_dirs.begin(), class_dirs.end());
  for (const auto& path : class_dirs) folder.class_names.push_back(path.filename().string());
  if (folder.class_names.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": no class sub-folders"));
  }
  if (!class_names.empty() && class_names != folder.class_names) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": its class sub-folders differ from the source folder's"));
  }
  std::vector<torch::Tensor> images;
  std::vector<int64_t> labels;
  for (size_t c = 0; c < class_dirs.size(); ++c) {
    for (const auto& file : PngFiles(class_dirs[c])) {
      OFFSITE_ASSIGN_OR_RETURN(torch::Tensor image, ReadImage(file.string(), side, false));
      images.push_back(image);
      labels.push_back(static_cast<int64_t>(c));
    }
  }
  if (images.empty()) return absl::InvalidArgumentError(absl::StrCat(dir, ": no PNG images"));
  folder.images = torch::stack(images);
  folder.labels = torch::tensor(labels, torch::kLong);
  return folder;
}

absl::StatusOr<FolderImages> LoadSegmentationFolder(const std::string& dir, int64_t side,
                                                    int64_t num_classes) {
  const std::filesystem::path root(dir);
  std::error_code error;
  if (!std::filesystem::is_directory(root / "images", error) ||
      !std::filesystem::is_directory(root / "masks", error)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": needs images/ and masks/ sub-folders"));
  }
  std::vector<torch::Tensor> images, masks;
  for (const auto& file : PngFiles(root / "images")) {
    const std::filesystem::path mask_path = root / "masks" / file.filename();
    if (!std::filesystem::exists(mask_path, error)) {
      return absl::InvalidArgumentError(absl::StrCat(mask_path.string(), ": missing mask"));
    }
    OFFSITE_ASSIGN_OR_RETURN(torch::Tensor image, ReadImage(file.string(), side, false));
    OFFSITE_ASSIGN_OR_RETURN(torch::Tensor mask, ReadImage(mask_path.string(), side, true));
    const int64_t top = mask.max().item<int64_t>();
    if (num_classes > 0 && top >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat(mask_path.string(), ": class ", top, " is not below ", num_classes));
    }
    images.push_back(image);
    masks.push_back(mask);
  }
  if (images.empty())
    return absl::InvalidArgumentError(absl::StrCat(dir, "/images: no PNG images"));
  FolderImages folder;
  folder.images = torch::stack(images);
  folder.labels = torch::stack(masks);
  return folder;
}

}  // namespace offsite
