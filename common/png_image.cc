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

absl::StatusOr<GrayImage> ReadPngGray(const std::string& path, bool raw) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int error = errno;
    if (error == ENOENT) return absl::NotFoundError(absl::StrCat("reading PNG ", path, ": no such file"));
    return absl::InvalidArgumentError(
        absl::StrCat("reading PNG ", path, ": ", std::strerror(error)));
  }
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_stdio(&image, file)) {
    const std::string message = image.message;
    std::fclose(file);
    return absl::InvalidArgumentError(absl::StrCat("reading PNG ", path, ": ", message));
  }
  // A class-index mask must keep its stored values: only 8-bit gray images
  // are read without conversion.
  if (raw && (image.format & (PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_COLORMAP |
                              PNG_FORMAT_FLAG_LINEAR)) != 0) {
    png_image_free(&image);
    std::fclose(file);
    return absl::InvalidArgumentError(absl::StrCat(
        "reading PNG ", path, ": a class mask must be an 8-bit grayscale PNG"));
  }
  image.format = PNG_FORMAT_GRAY;
  GrayImage gray;
  gray.width = static_cast<int>(image.width);
  gray.height = static_cast<int>(image.height);
  gray.pixels.resize(PNG_IMAGE_SIZE(image));
  png_color background = {0, 0, 0};
  const int ok = png_image_finish_read(&image, &background, gray.pixels.data(), 0, nullptr);
  std::fclose(file);
  if (!ok) {
    const std::string message = image.message;
    png_image_free(&image);
    return absl::InvalidArgumentError(absl::StrCat("reading PNG ", path, ": ", message));
  }
  return gray;
}

}  // namespace offsite
