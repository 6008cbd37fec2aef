#ifndef OFFSITE_COMMON_TEXT_DATA_H_
#define OFFSITE_COMMON_TEXT_DATA_H_

// Real text for language-model tasks: reading documents (fortune collections
// or the user's own text), a byte-level tokenizer, a document-level
// train/validation split into token streams, and windows over a stream for
// training and for exact evaluation. Knows nothing of models.
//
// Example (Debian's `fortunes` package):
//   OFFSITE_ASSIGN_OR_RETURN(std::vector<std::string> docs,
//                            ReadTextDocuments("/usr/share/games/fortunes/science"));
//   OFFSITE_ASSIGN_OR_RETURN(TokenSplits splits, TokenizeDocuments(docs, 0.1, /*seed=*/1));
//   std::mt19937_64 rng(seed);
//   torch::Tensor w = SampleWindows(splits.train, /*batch=*/32, /*context=*/128, rng);
//   torch::Tensor inputs = w.slice(1, 0, -1), targets = w.slice(1, 1);  // (32, 128) each

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace offsite {

// Byte-level tokenizer: each byte of the (UTF-8 or any other) text is one
// token 0..255, and 256 marks the end of a document. No merges, no unknowns.
class ByteTokenizer {
 public:
  static constexpr int64_t kEndOfText = 256;
  static constexpr int64_t kVocabSize = 257;

  static int64_t vocab_size() { return kVocabSize; }

  // One id per byte, in order ("é" is two ids, 195 169).
  static std::vector<int64_t> Encode(absl::string_view text);

  // The bytes of `ids`, with kEndOfText written as "<|endoftext|>" (GPT-2's
  // spelling), so Decode(Encode(s)) == s. InvalidArgument for an id outside
  // [0, 256]. Bytes need not form valid UTF-8 (a model may emit any).
  static absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids);
  // As above for a tensor of any shape holding integer ids (read in order).
  static absl::StatusOr<std::string> Decode(const torch::Tensor& ids);
};

// How documents become token ids: the tokenizer's encode function and the id
// that ends each document. Bytes by default; an imported GPT-2 or OPT reads
// its own BPE (BpeDocumentEncoder). Cheap to copy.
struct DocumentEncoder {
  std::function<std::vector<int64_t>(absl::string_view)> encode = &ByteTokenizer::Encode;
  int64_t end_of_text = ByteTokenizer::kEndOfText;
  int64_t vocab_size = ByteTokenizer::kVocabSize;
  std::string name = "bytes";  // For messages, e.g. "bytes" or "BPE (50257 tokens)".
};

// The BPE of a checkpoint's vocab.json and merges.txt (common/bpe_tokenizer.h),
// ending documents with its "<|endoftext|>" (GPT-2) or else "</s>" (OPT).
// InvalidArgument if the files do not load or hold neither token.
absl::StatusOr<DocumentEncoder> BpeDocumentEncoder(absl::string_view vocab_json,
                                                   absl::string_view merges_txt);

// Documents of a fortune file (Debian's `fortunes` package,
// /usr/share/games/fortunes/<collection>): entries separated by lines holding
// only "%". Each entry is its lines joined by "\n" (no trailing newline);
// entries that are empty or all whitespace are skipped.
//
// A file with no "%" line is read as plain text instead: each paragraph
// (lines up to a blank or all-whitespace line) is one document, so that a
// book or notes file still splits into many documents; a file that is one
// paragraph gives one document per line.
//
// Errors name the file: NotFound etc. from reading it, InvalidArgument if it
// holds no document or is not text (a NUL byte: binary, or UTF-16).
absl::StatusOr<std::vector<std::string>> ReadFortunes(const std::string& path);

// ReadFortunes on `path` if it is a file; if it is a directory, on every
// regular file directly in it (not recursive) in name order, concatenating
// their documents. Skipped in a directory: names starting with "." and the
// fortune index companions "*.dat" and "*.u8" (strfile's index and a symlink
// to the same text). A file in a directory may hold no document; the whole
// directory must hold at least one, and every file read must be text (else
// InvalidArgument naming it).
absl::StatusOr<std::vector<std::string>> ReadTextDocuments(const std::string& path);

// Token streams of a document-level split: 1-D int64 tensors of the
// encoder's ids, each document's tokens followed by its end_of_text.
struct TokenSplits {
  torch::Tensor train;
  torch::Tensor validation;
};

// Shuffles `documents` deterministically by `seed` (same seed, same split, on
// any platform), puts the first round(validation_fraction * n) of them, but at
// least one and at most n - 1, in validation and the rest in train (no
// document is in both), and encodes each split in that shuffled order.
// InvalidArgument if validation_fraction is not in (0, 1) or there are fewer
// than 2 documents.
absl::StatusOr<TokenSplits> TokenizeDocuments(const std::vector<std::string>& documents,
                                              double validation_fraction, uint64_t seed,
                                              const DocumentEncoder& encoder = DocumentEncoder());

// `batch` windows of context + 1 consecutive tokens of the 1-D `stream`, each
// starting at a uniformly drawn position: (batch, context + 1) int64, on the
// stream's device. Inputs are window[:, :-1], targets window[:, 1:].
// Requires batch > 0, context > 0 and stream.numel() >= context + 1 (else
// c10::Error). Windows may cross document boundaries (kEndOfText between).
torch::Tensor SampleWindows(const torch::Tensor& stream, int64_t batch, int64_t context,
                            std::mt19937_64& rng);
// As above with a generator seeded by `seed`: a pure function of its
// arguments, e.g. seed = base_seed + step makes a resumed run draw the same
// batches without saving generator state.
torch::Tensor SampleWindows(const torch::Tensor& stream, int64_t batch, int64_t context,
                            uint64_t seed);

// Windows for exact evaluation: window k is stream[k * context,
// k * context + context + 1), each (1, context + 1), so consecutive windows
// share one token (the last target of one is the first input of the next) and
// every token but the first is a target exactly once. The last window is
// shorter, (1, r + 1) with the r < context remaining targets, rather than
// padded: every id is valid input and no token is dropped. Empty for a stream
// of fewer than 2 tokens. Requires context > 0.
//
// Exact mean loss over the stream (LanguageModelLoss is a mean per window):
//   sum_k loss_k * (window_k.size(1) - 1) / (stream.numel() - 1).
std::vector<torch::Tensor> ContiguousWindows(const torch::Tensor& stream, int64_t context);

}  // namespace offsite

#endif  // OFFSITE_COMMON_TEXT_DATA_H_
