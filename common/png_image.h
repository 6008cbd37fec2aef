#ifndef OFFSITE_COMMON_PNG_IMAGE_H_
#define OFFSITE_COMMON_PNG_IMAGE_H_

// PNG output through libpng, for images a person looks at (e.g. FCMAE
// reconstruction grids), and 8-bit grayscale input (users' image folders).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

// Writes an 8-bit image to `path`: `pixels` holds height rows of width pixels,
// each of `channels` bytes, row-major with no padding; channels 1 is
// grayscale, 3 is RGB. The file appears complete or not at all (written to a
// temporary name, then renamed). InvalidArgument for bad dimensions, Internal
// for I/O or encoder failures; messages name the file.
//
// Example, from an (H, W, C) uint8 CPU tensor:
//   OFFSITE_RETURN_IF_ERROR(WritePng(path, grid.data_ptr<uint8_t>(), grid.size(1),
//                                    grid.size(0), grid.size(2)));
absl::Status WritePng(const std::string& path, const uint8_t* pixels, int width, int height,
                      int channels);

// An 8-bit grayscale image, row-major: pixels[row * width + column].
struct GrayImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

// Reads any PNG (gray, gray+alpha, RGB, RGBA, palette; 8 or 16 bit) as 8-bit
// grayscale; colour is converted by libpng's sRGB luminance weights, alpha is
// composited on black. With `raw` (class-index masks) only 8-bit gray PNGs are
// accepted, and their stored values are returned unchanged. NotFound when the file does not exist;
// InvalidArgument naming the file when it is not a readable PNG.
absl::StatusOr<GrayImage> ReadPngGray(const std::string& path, bool raw = false);

}  // namespace offsite

#endif  // OFFSITE_COMMON_PNG_IMAGE_H_
