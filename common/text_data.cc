#include "common/text_data.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/bpe_tokenizer.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace offsite {
namespace {

constexpr char kEndOfTextText[] = "<|endoftext|>";

bool IsBlank(absl::string_view line) { return absl::StripAsciiWhitespace(line).empty(); }

// Lines of `text` without their "\n" (and without a "\r" before it).
std::vector<absl::string_view> Lines(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();  // Final newline.
  for (absl::string_view& line : lines) {
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
  }
  return lines;
}

// Adds the lines [begin, end) as one document unless they are all blank.
void AddDocument(const std::vector<absl::string_view>& lines, size_t begin, size_t end,
                 std::vector<std::string>& documents) {
  while (begin < end && IsBlank(lines[begin])) ++begin;
  while (end > begin && IsBlank(lines[end - 1])) --end;
  if (begin == end) return;
  documents.push_back(absl::StrJoin(lines.begin() + begin, lines.begin() + end, "\n"));
}

// Documents of a fortune file's text (see ReadFortunes), possibly none.
std::vector<std::string> ParseDocuments(absl::string_view text) {
  const std::vector<absl::string_view> lines = Lines(text);
  const bool fortune =
      std::any_of(lines.begin(), lines.end(), [](absl::string_view line) { return line == "%"; });
  std::vector<std::string> documents;
  size_t begin = 0;
  for (size_t i = 0; i <= lines.size(); ++i) {
    const bool boundary = i == lines.size() || (fortune ? lines[i] == "%" : IsBlank(lines[i]));
    if (!boundary) continue;
    AddDocument(lines, begin, i, documents);
    begin = i + 1;
  }
  // Plain text that is one paragraph: one document per line, the usual form
  // of a corpus of sentences or records.
  if (!fortune && documents.size() == 1) {
    documents.clear();
    for (size_t i = 0; i < lines.size(); ++i) AddDocument(lines, i, i + 1, documents);
  }
  return documents;
}

// The text of `path`; InvalidArgument naming the file if it holds a NUL byte,
// which no text encoding but UTF-16/32 uses: a binary file in a text
// directory, or text saved as UTF-16.
absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  if (const size_t nul = text.find('\0'); nul != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " is not a text file (a NUL byte at offset ", nul, "); text must be UTF-8"));
  }
  return text;
}

bool SkippedInDirectory(const std::string& name) {
  return absl::StartsWith(name, ".") || absl::EndsWith(name, ".dat") || absl::EndsWith(name, ".u8");
}

torch::Tensor EncodeAll(const std::vector<std::string>& documents, const std::vector<size_t>& order,
                        const DocumentEncoder& encoder) {
  std::vector<int64_t> ids;
  for (size_t index : order) {
    const std::vector<int64_t> doc = encoder.encode(documents[index]);
    ids.insert(ids.end(), doc.begin(), doc.end());
    ids.push_back(encoder.end_of_text);
  }
  return torch::tensor(ids, torch::kLong);
}

}  // namespace

std::vector<int64_t> ByteTokenizer::Encode(absl::string_view text) {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

absl::StatusOr<std::string> ByteTokenizer::Decode(const std::vector<int64_t>& ids) {
  std::string text;
  text.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    if (id == kEndOfText) {
      text += kEndOfTextText;
    } else if (id >= 0 && id < 256) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " at position ", i,
                                                     " is not a byte-tokenizer id (0..", kEndOfText,
                                                     ")"));
    }
  }
  return text;
}

absl::StatusOr<std::string> ByteTokenizer::Decode(const torch::Tensor& ids) {
  if (!ids.defined()) return std::string();
  if (!at::isIntegralType(ids.scalar_type(), /*includeBool=*/false)) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ids must be integers, got ", c10::toString(ids.scalar_type())));
  }
  const torch::Tensor flat = ids.to(torch::kCPU, torch::kLong).contiguous().flatten();
  const int64_t* data = flat.data_ptr<int64_t>();
  return Decode(std::vector<int64_t>(data, data + flat.numel()));
}

absl::StatusOr<std::vector<std::string>> ReadFortunes(const std::string& path) {
  OFFSITE_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  std::vector<std::string> documents = ParseDocuments(text);
  if (documents.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no text documents in ", path));
  }
  return documents;
}

absl::StatusOr<std::vector<std::string>> ReadTextDocuments(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  // Anything but a directory, missing paths included, gets ReadFile's errors.
  if (!fs::is_directory(path, error)) return ReadFortunes(path);

  std::vector<std::string> files;
  fs::directory_iterator it(path, error);
  for (; !error && it != fs::directory_iterator(); it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (SkippedInDirectory(name)) continue;
    std::error_code type_error;
    if (!fs::is_regular_file(it->path(), type_error)) continue;  // Follows symlinks.
    files.push_back(it->path().string());
  }
  if (error) {
    return absl::ErrnoToStatus(error.value(), absl::StrCat("cannot list ", path));
  }
  std::sort(files.begin(), files.end());

  std::vector<std::string> documents;
  for (const std::string& file : files) {
    OFFSITE_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(file));
    std::vector<std::string> parsed = ParseDocuments(text);
    documents.insert(documents.end(), std::make_move_iterator(parsed.begin()),
                     std::make_move_iterator(parsed.end()));
  }
  if (documents.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no text documents in directory ", path, " (", files.size(), " files read)"));
  }
  return documents;
}

absl::StatusOr<DocumentEncoder> BpeDocumentEncoder(absl::string_view vocab_json,
                                                   absl::string_view merges_txt) {
  OFFSITE_ASSIGN_OR_RETURN(BpeTokenizer bpe, BpeTokenizer::FromStrings(vocab_json, merges_txt));
  auto tokenizer = std::make_shared<const BpeTokenizer>(std::move(bpe));
  std::optional<int64_t> end = tokenizer->TokenId(kEndOfTextText);
  if (!end) end = tokenizer->TokenId("</s>");
  if (!end) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab.json: no end-of-text token (\"", kEndOfTextText, "\" or \"</s>\")"));
  }
  DocumentEncoder encoder;
  encoder.encode = [tokenizer](absl::string_view text) { return tokenizer->Encode(text); };
  encoder.end_of_text = *end;
  encoder.vocab_size = tokenizer->vocab_size();
  encoder.name = absl::StrCat("BPE (", encoder.vocab_size, " tokens)");
  return encoder;
}

absl::StatusOr<TokenSplits> TokenizeDocuments(const std::vector<std::string>& documents,
                                              double validation_fraction, uint64_t seed,
                                              const DocumentEncoder& encoder) {
  if (!(validation_fraction > 0 && validation_fraction < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("validation_fraction must be in (0, 1), got ", validation_fraction));
  }
  const size_t n = documents.size();
  if (n < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        n, " document", n == 1 ? " is" : "s are",
        " too few for a train/validation split; documents are fortune entries (between \"%\" "
        "lines), else paragraphs (between blank lines), else lines"));
  }
  // At least one document on each side, so a small corpus still splits.
  const size_t n_validation = std::clamp<size_t>(
      static_cast<size_t>(std::llround(validation_fraction * static_cast<double>(n))), 1, n - 1);
  // Fisher-Yates on mt19937_64, whose output the standard fixes, rather than
  // std::shuffle, whose use of the engine is up to each library.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  for (size_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);

  TokenSplits splits;
  splits.validation = EncodeAll(
      documents, std::vector<size_t>(order.begin(), order.begin() + n_validation), encoder);
  splits.train =
      EncodeAll(documents, std::vector<size_t>(order.begin() + n_validation, order.end()), encoder);
  return splits;
}

torch::Tensor SampleWindows(const torch::Tensor& stream, int64_t batch, int64_t context,
                            std::mt19937_64& rng) {
  TORCH_CHECK(stream.dim() == 1, "token stream must be 1-D, got shape ", stream.sizes());
  TORCH_CHECK(batch > 0, "batch must be positive, got ", batch);
  TORCH_CHECK(context > 0, "context must be positive, got ", context);
  const int64_t length = stream.numel();
  TORCH_CHECK(length >= context + 1, "a token stream of ", length,
              " tokens is too short for windows of context ", context, " + 1");
  const auto starts_count = static_cast<uint64_t>(length - context);
  std::vector<int64_t> starts(batch);
  for (int64_t& start : starts) start = static_cast<int64_t>(rng() % starts_count);
  const torch::Tensor offsets =
      torch::tensor(starts, torch::kLong).unsqueeze(1) + torch::arange(context + 1).unsqueeze(0);
  return stream.index({offsets.to(stream.device())});
}

torch::Tensor SampleWindows(const torch::Tensor& stream, int64_t batch, int64_t context,
                            uint64_t seed) {
  std::mt19937_64 rng(seed);
  return SampleWindows(stream, batch, context, rng);
}

std::vector<torch::Tensor> ContiguousWindows(const torch::Tensor& stream, int64_t context) {
  TORCH_CHECK(stream.dim() == 1, "token stream must be 1-D, got shape ", stream.sizes());
  TORCH_CHECK(context > 0, "context must be positive, got ", context);
  std::vector<torch::Tensor> windows;
  const int64_t length = stream.numel();
  for (int64_t begin = 0; begin + 1 < length; begin += context) {
    const int64_t end = std::min(begin + context + 1, length);
    windows.push_back(stream.slice(0, begin, end).unsqueeze(0));
  }
  return windows;
}

}  // namespace offsite
