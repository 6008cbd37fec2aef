#ifndef OFFSITE_COMMON_BPE_TOKENIZER_H_
#define OFFSITE_COMMON_BPE_TOKENIZER_H_

// GPT-2's byte-level BPE tokenizer, loaded from the `vocab.json` (token -> id)
// and `merges.txt` files that Hugging Face and OpenAI ship.
//
// Encode works as GPT-2's encoder.py: the text is split by GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (see PreTokenize), each piece's bytes are written as bytes_to_unicode()
// symbols, and merges apply lowest rank first. Any byte string round-trips
// exactly, invalid UTF-8 included: Decode(Encode(s)) == s. Special tokens such
// as "<|endoftext|>" get no special treatment (the text is split like any other).
//
// Example:
//   OFFSITE_ASSIGN_OR_RETURN(BpeTokenizer tokenizer,
//                            BpeTokenizer::Load("gpt2/vocab.json", "gpt2/merges.txt"));
//   std::vector<int64_t> ids = tokenizer.Encode("Hello world");  // {15496, 995} for GPT-2.
//   OFFSITE_ASSIGN_OR_RETURN(std::string text, tokenizer.Decode(ids));  // "Hello world"
//
// Encode and Decode may be called from several threads at once.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace offsite {

class BpeTokenizer {
 public:
  // Reads both files. Beyond I/O errors (NotFound, ...), InvalidArgumentError
  // naming the file (and the line, for merges.txt) when:
  //  - vocab.json is not a JSON object of token -> integer id, repeats a token,
  //    its ids are not exactly 0..N-1 each once, a token is not made of
  //    bytes_to_unicode() symbols, or a symbol for one of the 256 bytes is missing;
  //  - a merges.txt line (after an optional first "#version" line; blank lines
  //    are skipped) is not "left right", repeats an earlier merge, or its left,
  //    right or merged token is not in the vocabulary.
  static absl::StatusOr<BpeTokenizer> Load(const std::string& vocab_path,
                                           const std::string& merges_path);

  // As Load, from the files' contents; errors name "vocab.json" and "merges.txt".
  static absl::StatusOr<BpeTokenizer> FromStrings(absl::string_view vocab_json,
                                                  absl::string_view merges_text);

  BpeTokenizer(BpeTokenizer&&);
  BpeTokenizer& operator=(BpeTokenizer&&);
  ~BpeTokenizer();

  // Token ids for any bytes (valid UTF-8 or not).
  std::vector<int64_t> Encode(absl::string_view text) const;

  // The bytes that `ids` stand for. InvalidArgumentError for an id outside
  // [0, vocab_size()). Decoding a slice of a sequence may split a UTF-8 character.
  absl::StatusOr<std::string> Decode(const std::vector<int64_t>& ids) const;

  // Number of tokens; ids are 0..vocab_size()-1.
  int64_t vocab_size() const { return static_cast<int64_t>(token_bytes_.size()); }

  // The id of the token that stands for exactly `bytes`, e.g. a special token
  // such as "<|endoftext|>" that Encode never produces; nullopt if none.
  std::optional<int64_t> TokenId(absl::string_view bytes) const;

  // Splits `text` into the pieces GPT-2's pattern (above) matches; the pieces
  // concatenate to `text`. Follows Python's `regex` module: \p{L} and \p{N} are
  // the Unicode general categories L* and N* (tables generated from that module),
  // \s is the Unicode White_Space property. A byte that is not part of valid
  // UTF-8 counts as neither letter, number nor space, like punctuation.
  //   PreTokenize("Hello world's  2x\n") == {"Hello", " world", "'s", " ", " 2", "x", "\n"}
  static std::vector<absl::string_view> PreTokenize(absl::string_view text);

 private:
  struct Merge {
    int rank;
    int64_t merged_id;
  };
  struct Cache;

  BpeTokenizer();

  static absl::StatusOr<BpeTokenizer> Build(absl::string_view vocab_json,
                                            absl::string_view vocab_source,
                                            absl::string_view merges_text,
                                            absl::string_view merges_source);

  // Appends the ids of one pre-tokenized piece, from the cache when it can.
  void EncodePiece(absl::string_view piece, std::vector<int64_t>& ids) const;
  // The BPE merges proper, for one piece.
  std::vector<int64_t> MergePiece(absl::string_view piece) const;

  std::vector<std::string> token_bytes_;  // id -> the raw bytes it stands for.
  int64_t byte_ids_[256] = {};            // Byte -> id of its single-byte symbol.
  absl::flat_hash_map<std::pair<int64_t, int64_t>, Merge> merges_;  // (left, right) ids.
  std::unique_ptr<Cache> cache_;  // Piece -> ids; behind a pointer to keep the class movable.
};

}  // namespace offsite

#endif  // OFFSITE_COMMON_BPE_TOKENIZER_H_
