#ifndef OFFSITE_TESTS_UTIL_BPE_FILES_H_
#define OFFSITE_TESTS_UTIL_BPE_FILES_H_

// Small hand-made GPT-2 tokenizer files for tests: nothing can be downloaded
// here, so tests write their own vocab.json in GPT-2's byte-level alphabet.
//
// Example:
//   std::string vocab = testutil::ByteLevelVocabJson({"he", "<|endoftext|>"});
//   // ids 0..255 are the bytes, "he" is 256, "<|endoftext|>" 257.
//   auto tokenizer = BpeTokenizer::FromStrings(vocab, "#version: 0.2\nh e\n");

#include <string>
#include <vector>

namespace offsite::testutil {

// GPT-2's bytes_to_unicode() symbol for byte `b` (0..255), UTF-8 encoded.
std::string ByteSymbol(int b);

// A vocab.json with the 256 byte symbols as ids 0..255 (id == byte), then
// `extra` from id 256 on, in order.
std::string ByteLevelVocabJson(const std::vector<std::string>& extra);

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_BPE_FILES_H_
