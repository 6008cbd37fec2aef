#include "common/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/util/bpe_files.h"

namespace offsite {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using testutil::ByteSymbol;

std::string VocabJson(const std::vector<std::string>& extra) {
  return testutil::ByteLevelVocabJson(extra);
}

constexpr int64_t kGt = 256;    // "Ġt"
constexpr int64_t kHe = 257;    // "he"
constexpr int64_t kGthe = 258;  // "Ġthe"
constexpr int64_t kThe = 259;   // "the"

BpeTokenizer TheTokenizer() {
  absl::StatusOr<BpeTokenizer> tokenizer = BpeTokenizer::FromStrings(
      VocabJson({"Ġt", "he", "Ġthe", "the"}), "#version: 0.2\nĠ t\nh e\nĠt he\nt he\n");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return std::move(tokenizer).value();
}

absl::Status LoadStatus(const std::string& vocab, const std::string& merges) {
  return BpeTokenizer::FromStrings(vocab, merges).status();
}

TEST(BpeTokenizerTest, ByteSymbolsAreGpt2s) {
  EXPECT_EQ(ByteSymbol(' '), "Ġ");
  EXPECT_EQ(ByteSymbol('\n'), "Ċ");
  EXPECT_EQ(ByteSymbol(0), "Ā");
  EXPECT_EQ(ByteSymbol(0xAD), "Ń");
  EXPECT_EQ(ByteSymbol('a'), "a");
  EXPECT_EQ(ByteSymbol(0xE9), "é");
  // Each byte encodes to its own symbol's id (here id == byte).
  const BpeTokenizer tokenizer = TheTokenizer();
  EXPECT_THAT(tokenizer.Encode(std::string("\0\n\xad", 3)), ElementsAre(0, '\n', 0xAD));
}

TEST(BpeTokenizerTest, EncodesWithMergesByRank) {
  const BpeTokenizer tokenizer = TheTokenizer();
  EXPECT_EQ(tokenizer.vocab_size(), 260);
  EXPECT_THAT(tokenizer.Encode("the the"), ElementsAre(kThe, kGthe));
  EXPECT_THAT(tokenizer.Encode(" t"), ElementsAre(kGt));
  EXPECT_THAT(tokenizer.Encode("he"), ElementsAre(kHe));
  EXPECT_THAT(tokenizer.Encode("then"), ElementsAre(kThe, 'n'));
  EXPECT_THAT(tokenizer.Encode(" them"), ElementsAre(kGthe, 'm'));
  EXPECT_THAT(tokenizer.Encode("  he"), ElementsAre(' ', ' ', kHe));
  EXPECT_THAT(tokenizer.Encode("x"), ElementsAre('x'));
  EXPECT_TRUE(tokenizer.Encode("").empty());
}

TEST(BpeTokenizerTest, LowerRankMergesFirst) {
  const std::string vocab = VocabJson({"ab", "bc"});
  absl::StatusOr<BpeTokenizer> ab_first = BpeTokenizer::FromStrings(vocab, "a b\nb c\n");
  absl::StatusOr<BpeTokenizer> bc_first = BpeTokenizer::FromStrings(vocab, "b c\na b\n");
  ASSERT_TRUE(ab_first.ok()) << ab_first.status();
  ASSERT_TRUE(bc_first.ok()) << bc_first.status();
  EXPECT_THAT(ab_first->Encode("abc"), ElementsAre(256, 'c'));
  EXPECT_THAT(bc_first->Encode("abc"), ElementsAre('a', 257));
}

TEST(BpeTokenizerTest, MergesRepeatedPairsLeftToRight) {
  absl::StatusOr<BpeTokenizer> tokenizer =
      BpeTokenizer::FromStrings(VocabJson({"aa", "aaaa"}), "a a\naa aa\n");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT(tokenizer->Encode("aaa"), ElementsAre(256, 'a'));
  EXPECT_THAT(tokenizer->Encode("aaaaa"), ElementsAre(257, 'a'));
  EXPECT_THAT(tokenizer->Encode("aaaaaa"), ElementsAre(257, 256));
}

TEST(BpeTokenizerTest, PreTokenizeMatchesGpt2Pattern) {
  // Expected pieces from Python: regex.findall(GPT-2's pattern, text).
  using Pieces = std::vector<absl::string_view>;
  EXPECT_EQ(BpeTokenizer::PreTokenize("Hello world's  2x\n"),
            (Pieces{"Hello", " world", "'s", " ", " 2", "x", "\n"}));
  EXPECT_EQ(BpeTokenizer::PreTokenize("I'm   here!!  "),
            (Pieces{"I", "'m", "  ", " here", "!!", "  "}));
  EXPECT_EQ(BpeTokenizer::PreTokenize("don't 'Re' x''s"),
            (Pieces{"don", "'t", " '", "Re", "'", " x", "''", "s"}));
  EXPECT_EQ(BpeTokenizer::PreTokenize("naïve café 日本 🙂\n\t  x"),
            (Pieces{"naïve", " café", " 日本", " 🙂", "\n\t ", " x"}));
  EXPECT_EQ(BpeTokenizer::PreTokenize("a\u00a0b  \u3000c 12³ Ⅻ"),
            (Pieces{"a", "\u00a0", "b", "  ", "\u3000", "c", " 12³", " Ⅻ"}));
  EXPECT_EQ(BpeTokenizer::PreTokenize("x\n\n y"), (Pieces{"x", "\n\n", " y"}));
  EXPECT_EQ(BpeTokenizer::PreTokenize("  "), (Pieces{"  "}));
  EXPECT_TRUE(BpeTokenizer::PreTokenize("").empty());
  // Invalid UTF-8 bytes count as punctuation; a truncated character too.
  EXPECT_EQ(BpeTokenizer::PreTokenize("a\xff\xfe b \xe6\x97"),
            (Pieces{"a", "\xff\xfe", " b", " \xe6\x97"}));
}

TEST(BpeTokenizerTest, RoundTripsUnicodeText) {
  const BpeTokenizer tokenizer = TheTokenizer();
  for (const std::string text :
       {"naïve café 日本 🙂\n\t  x", "the the  then\r\n", "Ωμέγα ١٢٣ \u200b\u00a0end",
        "'s'S'LL 'll's  ", "\U0010FFFF\U0001F600\u0301e"}) {
    const std::vector<int64_t> ids = tokenizer.Encode(text);
    const absl::StatusOr<std::string> decoded = tokenizer.Decode(ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text);
  }
}

TEST(BpeTokenizerTest, RoundTripsRandomBytesIncludingInvalidUtf8) {
  const BpeTokenizer tokenizer = TheTokenizer();
  std::mt19937 rng(1234);
  const std::string alphabet = "the  \n\t'sx\xc3\xa9\xe6\x97\xa5\xf0\x9f\x99\x82\x80\xff";
  for (int trial = 0; trial < 3000; ++trial) {
    std::string text(rng() % 48, '\0');
    for (char& c : text) {
      // Half the strings are any bytes; half mix pieces of valid and broken UTF-8.
      c = trial % 2 == 0 ? static_cast<char>(rng()) : alphabet[rng() % alphabet.size()];
    }
    const absl::StatusOr<std::string> decoded = tokenizer.Decode(tokenizer.Encode(text));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    ASSERT_EQ(*decoded, text) << "trial " << trial;
  }
}

TEST(BpeTokenizerTest, EncodeIsTheSameFromManyThreadsAndCache) {
  const BpeTokenizer tokenizer = TheTokenizer();
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(absl::StrCat("the ", i, " then the", i % 7));
  std::vector<std::vector<int64_t>> expected;
  for (const std::string& text : texts) expected.push_back(tokenizer.Encode(text));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (tokenizer.Encode(texts[i]) != expected[i]) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST(BpeTokenizerTest, EncodesLongWordsQuickly) {
  absl::StatusOr<BpeTokenizer> tokenizer =
      BpeTokenizer::FromStrings(VocabJson({"aa", "aaaa"}), "a a\naa aa\n");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // Quadratic merging would take minutes here.
  const std::string text(200'001, 'a');
  const std::vector<int64_t> ids = tokenizer->Encode(text);
  ASSERT_EQ(ids.size(), 50'001u);
  EXPECT_EQ(ids.front(), 257);
  EXPECT_EQ(ids.back(), 'a');
}

TEST(BpeTokenizerTest, DecodeRejectsUnknownIds) {
  const BpeTokenizer tokenizer = TheTokenizer();
  absl::StatusOr<std::string> decoded = tokenizer.Decode({kThe, 260});
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(decoded.status().message(),
              HasSubstr("token id 260 at position 1 is not in [0, 260)"));
  decoded = tokenizer.Decode({-1});
  EXPECT_THAT(decoded.status().message(), HasSubstr("token id -1 at position 0"));
  decoded = tokenizer.Decode({kThe, kGthe, ' ', 0xE6, 0x97, 0xA5});
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, "the the 日");
}

TEST(BpeTokenizerTest, TokenIdFindsSpecialTokensThatEncodeNeverMakes) {
  absl::StatusOr<BpeTokenizer> tokenizer =
      BpeTokenizer::FromStrings(VocabJson({"he", "<|endoftext|>"}), "h e\n");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(tokenizer->TokenId("<|endoftext|>"), 257);
  EXPECT_EQ(tokenizer->TokenId("he"), 256);
  EXPECT_EQ(tokenizer->TokenId(" "), ' ');  // The byte itself, not its symbol "Ġ".
  EXPECT_EQ(tokenizer->TokenId("</s>"), std::nullopt);
  // Encode splits the special token's text like any other.
  EXPECT_THAT(tokenizer->Encode("<|endoftext|>"), ::testing::Not(::testing::Contains(257)));
}

TEST(BpeTokenizerTest, LoadsFilesAndNamesThemInErrors) {
  const std::string dir = ::testing::TempDir();
  const std::string vocab_path = absl::StrCat(dir, "/bpe_vocab.json");
  const std::string merges_path = absl::StrCat(dir, "/bpe_merges.txt");
  std::ofstream(vocab_path) << VocabJson({"Ġt", "he", "Ġthe", "the"});
  std::ofstream(merges_path) << "#version: 0.2\r\nĠ t\r\nh e\r\nĠt he\r\nt he\r\n";
  absl::StatusOr<BpeTokenizer> tokenizer = BpeTokenizer::Load(vocab_path, merges_path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_THAT(tokenizer->Encode("the the"), ElementsAre(kThe, kGthe));

  std::ofstream(merges_path) << "#version: 0.2\nĠ t\nh e\nĠt hex\n";
  EXPECT_THAT(BpeTokenizer::Load(vocab_path, merges_path).status().message(),
              HasSubstr(absl::StrCat(merges_path, ":4: merge \"Ġt hex\": \"hex\" is not in")));
  std::ofstream(vocab_path) << "{";
  EXPECT_THAT(BpeTokenizer::Load(vocab_path, merges_path).status().message(),
              HasSubstr(absl::StrCat(vocab_path, ": not valid JSON")));
  EXPECT_EQ(BpeTokenizer::Load(absl::StrCat(dir, "/missing.json"), merges_path).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(BpeTokenizerTest, RejectsMalformedVocab) {
  const auto expect = [](const std::string& vocab, const std::string& message) {
    const absl::Status status = LoadStatus(vocab, "");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << vocab.substr(0, 80);
    EXPECT_THAT(status.message(), HasSubstr(message));
  };
  expect("{\"a\": 0,", "vocab.json: not valid JSON");
  expect("[\"a\"]", "vocab.json: not a JSON object of token -> id");
  const std::string bytes = VocabJson({}).substr(0, VocabJson({}).size() - 1);  // Without "}".
  expect(bytes + ", \"xyz\": -1}",
         "vocab.json: token \"xyz\": id -1 is not an integer in [0, 257)");
  expect(bytes + ", \"xyz\": 1.5}", "token \"xyz\": id 1.5 is not an integer");
  expect(bytes + ", \"xyz\": \"256\"}", "token \"xyz\": id \"256\" is not an integer");
  expect(bytes + ", \"xyz\": 257}", "token \"xyz\": id 257 is not an integer in [0, 257)");
  expect(bytes + ", \"xyz\": 3, \"yz\": 256}", "id 3 is also the id of");
  expect(bytes + ", \"xyz\": 256, \"xyz\": 257}", "vocab.json: token \"xyz\" appears twice");
  expect(bytes + ", \"日\": 256}",
         "vocab.json: token \"日\": character U+65E5 is not one of GPT-2's byte symbols");
  expect(bytes + ", \"a b\": 256}", "character U+0020 is not one of GPT-2's byte symbols");
  // Byte 0x00's symbol "Ā" renamed: no symbol for that byte.
  std::string no_zero = VocabJson({"xyz"});
  no_zero.replace(no_zero.find("\"Ā\""), 4, "\"xy\"");
  expect(no_zero, "vocab.json: lacks the symbol \"Ā\" for byte 0x00");
}

TEST(BpeTokenizerTest, RejectsMalformedMerges) {
  const std::string vocab = VocabJson({"ab", "abc"});
  const auto expect = [&vocab](const std::string& merges, const std::string& message) {
    const absl::Status status = LoadStatus(vocab, merges);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << merges;
    EXPECT_THAT(status.message(), HasSubstr(message));
  };
  expect("a b\nab\n", "merges.txt:2: expected two tokens separated by one space, got \"ab\"");
  expect("a b c", "merges.txt:1: expected two tokens separated by one space, got \"a b c\"");
  expect("a  b", "merges.txt:1: expected two tokens");
  expect("#version: 0.2\na b\nab x\n", "merges.txt:3: merge \"ab x\": \"abx\" is not in the vocab");
  expect("a b\nzz c\n", "merges.txt:2: merge \"zz c\": \"zz\" is not in the vocabulary");
  expect("b c\n", "merges.txt:1: merge \"b c\": \"bc\" is not in the vocabulary");
  expect("a b\nab c\n\na b\n", "merges.txt:4: merge \"a b\" repeats line 1");
  expect("a b\n#version: 0.2\n", "merges.txt:2: merge \"#version: 0.2\"");
  EXPECT_TRUE(LoadStatus(vocab, "#version: 0.2\na b\n\nab c").ok());
  EXPECT_TRUE(LoadStatus(vocab, "").ok());
}

}  // namespace
}  // namespace offsite
