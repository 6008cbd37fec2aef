#ifndef OFFSITE_COMMON_PNG_IMAGE_H_
#define OFFSITE_COMMON_PNG_IMAGE_H_

// PNG output through libpng, for images a person looks at (e.g. FCMAE
// reconstruction grids).

#include <cstdint>
#include <string>

#include "absl/status/status.h"

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

}  // namespace offsite

#endif  // OFFSITE_COMMON_PNG_IMAGE_H_
