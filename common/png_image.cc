#include "common/png_image.h"

#include <png.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace offsite {

absl::Status WritePng(const std::string& path, const uint8_t* pixels, int width, int height,
                      int channels) {
  if (pixels == nullptr || width < 1 || height < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("writing PNG ", path, ": empty image (", width, "x", height, ")"));
  }
  if (channels != 1 && channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("writing PNG ", path, ": ", channels,
                     " channels; only 1 (gray) and 3 (RGB) are supported"));
  }
  // libpng's simplified API reports errors through image.message rather than
  // longjmp, so no setjmp is needed here.
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;

  const std::string temp_path = path + ".tmp";
  if (!png_image_write_to_file(&image, temp_path.c_str(), /*convert_to_8bit=*/0, pixels,
                               /*row_stride=*/0, /*colormap=*/nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    std::remove(temp_path.c_str());
    return absl::InternalError(absl::StrCat("writing PNG ", path, ": ", message));
  }
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temp_path.c_str());
    return absl::InternalError(absl::StrCat("writing PNG ", path, ": rename from ", temp_path, ": ",
                                            std::strerror(error)));
  }
  return absl::OkStatus();
}

}  // namespace offsite
