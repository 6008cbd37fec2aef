#include "common/text_data.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_split.h"
#include "tests/util/bpe_files.h"

namespace offsite {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class TextDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("text_data_test_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out << text;
    return path;
  }

  std::filesystem::path dir_;
};

// Documents of a stream: the texts between kEndOfText tokens.
std::vector<std::string> DecodeDocuments(const torch::Tensor& stream) {
  EXPECT_EQ(stream.dim(), 1);
  EXPECT_EQ(stream.scalar_type(), torch::kLong);
  EXPECT_EQ(stream[-1].item<int64_t>(), ByteTokenizer::kEndOfText);
  std::vector<std::string> documents;
  std::string current;
  for (int64_t i = 0; i < stream.numel(); ++i) {
    const int64_t id = stream[i].item<int64_t>();
    if (id == ByteTokenizer::kEndOfText) {
      documents.push_back(current);
      current.clear();
    } else {
      current.push_back(static_cast<char>(id));
    }
  }
  return documents;
}

std::vector<std::string> ManyDocuments(int n) {
  std::vector<std::string> documents;
  for (int i = 0; i < n; ++i) documents.push_back("document number " + std::to_string(i));
  return documents;
}

TEST(ByteTokenizerTest, RoundTripsUtf8Bytes) {
  const std::string text = "Grüße, 世界! \xF0\x9F\x98\x80\n\t";
  const std::vector<int64_t> ids = ByteTokenizer::Encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    EXPECT_EQ(ids[i], static_cast<unsigned char>(text[i]));
    EXPECT_GE(ids[i], 0);
    EXPECT_LT(ids[i], 256);
  }
  EXPECT_THAT(ByteTokenizer::Encode("é"), ElementsAre(195, 169));
  const absl::StatusOr<std::string> decoded = ByteTokenizer::Decode(ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, text);
  const absl::StatusOr<std::string> from_tensor =
      ByteTokenizer::Decode(torch::tensor(ids, torch::kLong));
  ASSERT_TRUE(from_tensor.ok()) << from_tensor.status();
  EXPECT_EQ(*from_tensor, text);
  EXPECT_EQ(ByteTokenizer::vocab_size(), 257);
  EXPECT_EQ(ByteTokenizer::kEndOfText, 256);
}

TEST(ByteTokenizerTest, DecodesEndOfTextAndRejectsOtherIds) {
  const absl::StatusOr<std::string> decoded =
      ByteTokenizer::Decode(std::vector<int64_t>{'a', ByteTokenizer::kEndOfText, 'b'});
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "a<|endoftext|>b");
  for (int64_t bad : {int64_t{257}, int64_t{-1}}) {
    const absl::StatusOr<std::string> result =
        ByteTokenizer::Decode(std::vector<int64_t>{'a', bad});
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr(std::to_string(bad)));
  }
  EXPECT_EQ(ByteTokenizer::Decode(torch::ones({2}, torch::kFloat)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TextDataTest, ReadsFortuneEntries) {
  const std::string path = Write("quotes",
                                 "First fortune.\n"
                                 "%\n"
                                 "Second one,\n"
                                 "\n"
                                 "  with a blank line inside.\n"
                                 "%\n"
                                 "%\n"
                                 "   \n"
                                 "%\n"
                                 "Last, 100% without final separator\n");
  const absl::StatusOr<std::vector<std::string>> documents = ReadFortunes(path);
  ASSERT_TRUE(documents.ok()) << documents.status();
  EXPECT_THAT(*documents,
              ElementsAre("First fortune.", "Second one,\n\n  with a blank line inside.",
                          "Last, 100% without final separator"));
}

TEST_F(TextDataTest, ReadsPlainTextAsParagraphs) {
  const std::string path = Write("notes.txt",
                                 "\n"
                                 "A paragraph\r\n"
                                 "of two lines.\r\n"
                                 "\r\n"
                                 "\n"
                                 "Another.\n");
  const absl::StatusOr<std::vector<std::string>> documents = ReadFortunes(path);
  ASSERT_TRUE(documents.ok()) << documents.status();
  EXPECT_THAT(*documents, ElementsAre("A paragraph\nof two lines.", "Another."));
}

TEST_F(TextDataTest, ReadsPlainTextOfOneParagraphAsLines) {
  const std::string path = Write("sentences.txt",
                                 "The first record.\n"
                                 "The second record.\r\n"
                                 "The third.\n");
  const absl::StatusOr<std::vector<std::string>> documents = ReadFortunes(path);
  ASSERT_TRUE(documents.ok()) << documents.status();
  EXPECT_THAT(*documents, ElementsAre("The first record.", "The second record.", "The third."));
}

TEST_F(TextDataTest, ErrorsNameTheFile) {
  const std::string missing = (dir_ / "missing").string();
  const absl::StatusOr<std::vector<std::string>> not_found = ReadFortunes(missing);
  EXPECT_EQ(not_found.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(not_found.status().message(), HasSubstr(missing));
  EXPECT_EQ(ReadTextDocuments(missing).status().code(), absl::StatusCode::kNotFound);

  const std::string empty = Write("empty", "%\n\n%\n");
  const absl::StatusOr<std::vector<std::string>> no_documents = ReadFortunes(empty);
  EXPECT_EQ(no_documents.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_documents.status().message(), HasSubstr(empty));

  // A binary (or UTF-16) file, alone or among text files, is refused by name.
  const std::string binary = Write("program", std::string("\x7f"
                                                          "ELF\0\0\1text\n",
                                                          11));
  for (const std::string& path : {binary, dir_.string()}) {
    const absl::Status status = ReadTextDocuments(path).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(status.message(),
                HasSubstr(binary + " is not a text file (a NUL byte at offset 4)"));
  }
}

TEST_F(TextDataTest, ReadsADirectoryInNameOrderSkippingIndexFiles) {
  Write("b", "bee one\n%\nbee two\n");
  Write("a", "ay\n");
  Write("a.dat", "binary index\n");
  Write("a.u8", "duplicate\n");
  Write(".hidden", "hidden\n");
  Write("c", "");
  std::filesystem::create_directories(dir_ / "sub");
  Write("sub/d", "nested\n");
  const absl::StatusOr<std::vector<std::string>> documents = ReadTextDocuments(dir_.string());
  ASSERT_TRUE(documents.ok()) << documents.status();
  EXPECT_THAT(*documents, ElementsAre("ay", "bee one", "bee two"));

  const absl::StatusOr<std::vector<std::string>> file = ReadTextDocuments((dir_ / "b").string());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT(*file, ElementsAre("bee one", "bee two"));
}

TEST_F(TextDataTest, EmptyDirectoryIsAnError) {
  const absl::StatusOr<std::vector<std::string>> documents = ReadTextDocuments(dir_.string());
  EXPECT_EQ(documents.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(documents.status().message(), HasSubstr(dir_.string()));
}

TEST(FortuneCollectionTest, ReadsDebianScienceFortunes) {
  const std::string path = "/usr/share/games/fortunes/science";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (package fortunes)";
  const absl::StatusOr<std::vector<std::string>> documents = ReadTextDocuments(path);
  ASSERT_TRUE(documents.ok()) << documents.status();
  EXPECT_GT(documents->size(), 50u);
  for (const std::string& document : *documents) {
    EXPECT_FALSE(document.empty());
    EXPECT_THAT(absl::StrSplit(document, '\n'), ::testing::Not(::testing::Contains("%")));
  }
  const absl::StatusOr<TokenSplits> splits = TokenizeDocuments(*documents, 0.1, 1);
  ASSERT_TRUE(splits.ok()) << splits.status();
  EXPECT_GT(splits->train.numel(), 10 * 128);
  EXPECT_GT(splits->validation.numel(), 128);
}

TEST(TokenizeDocumentsTest, SplitsByDocumentDeterministicallyBySeed) {
  const std::vector<std::string> documents = ManyDocuments(40);
  const absl::StatusOr<TokenSplits> a = TokenizeDocuments(documents, 0.25, 7);
  const absl::StatusOr<TokenSplits> b = TokenizeDocuments(documents, 0.25, 7);
  const absl::StatusOr<TokenSplits> c = TokenizeDocuments(documents, 0.25, 8);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(torch::equal(a->train, b->train));
  EXPECT_TRUE(torch::equal(a->validation, b->validation));
  EXPECT_FALSE(torch::equal(a->validation, c->validation));

  const std::vector<std::string> train = DecodeDocuments(a->train);
  const std::vector<std::string> validation = DecodeDocuments(a->validation);
  EXPECT_EQ(validation.size(), 10u);
  EXPECT_EQ(train.size(), 30u);
  std::set<std::string> all(train.begin(), train.end());
  for (const std::string& document : validation) {
    EXPECT_EQ(all.count(document), 0u) << document << " is in both splits";
    all.insert(document);
  }
  EXPECT_EQ(all, std::set<std::string>(documents.begin(), documents.end()));
  // Shuffled, not the input order.
  EXPECT_NE(train, std::vector<std::string>(documents.begin() + 10, documents.end()));
}

TEST(TokenizeDocumentsTest, UsesTheEncoderAndItsEndOfText) {
  absl::StatusOr<DocumentEncoder> bpe =
      BpeDocumentEncoder(testutil::ByteLevelVocabJson({"he", "<|endoftext|>"}), "h e\n");
  ASSERT_TRUE(bpe.ok()) << bpe.status();
  EXPECT_EQ(bpe->end_of_text, 257);
  EXPECT_EQ(bpe->vocab_size, 258);
  const absl::StatusOr<TokenSplits> splits =
      TokenizeDocuments({"the", "he", "hehe", "she"}, 0.5, 3, *bpe);
  ASSERT_TRUE(splits.ok()) << splits.status();
  const torch::Tensor all = torch::cat({splits->train, splits->validation});
  // "the" -> t he, "he" -> he, "hehe" -> he he, "she" -> s he: 4 documents,
  // 7 tokens and 4 end-of-text ids, with no 'h' or 'e' byte left unmerged.
  EXPECT_EQ(all.numel(), 11);
  EXPECT_EQ(all.eq(257).sum().item<int64_t>(), 4);
  EXPECT_EQ(all.eq(256).sum().item<int64_t>(), 5);
  EXPECT_EQ(all.eq('h').sum().item<int64_t>(), 0);
  // The default is bytes, ended by ByteTokenizer::kEndOfText.
  const absl::StatusOr<TokenSplits> bytes = TokenizeDocuments({"the", "he", "hehe", "she"}, 0.5, 3);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(torch::cat({bytes->train, bytes->validation}).numel(), 16);
}

TEST(BpeDocumentEncoderTest, EndsDocumentsWithOptsTokenOrRefusesWithoutOne) {
  absl::StatusOr<DocumentEncoder> opt =
      BpeDocumentEncoder(testutil::ByteLevelVocabJson({"</s>", "he"}), "h e\n");
  ASSERT_TRUE(opt.ok()) << opt.status();
  EXPECT_EQ(opt->end_of_text, 256);
  absl::StatusOr<DocumentEncoder> none =
      BpeDocumentEncoder(testutil::ByteLevelVocabJson({"he"}), "h e\n");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("end-of-text"));
  EXPECT_THAT(BpeDocumentEncoder("{}", "").status().message(), HasSubstr("vocab.json"));
}

TEST(TokenizeDocumentsTest, KeepsADocumentOnEachSideOfASmallCorpus) {
  // round(0.1 * 3) = 0 and round(0.9 * 3) = 3 would leave a split empty.
  for (const double fraction : {0.1, 0.9}) {
    const absl::StatusOr<TokenSplits> splits = TokenizeDocuments(ManyDocuments(3), fraction, 1);
    ASSERT_TRUE(splits.ok()) << splits.status();
    EXPECT_EQ(DecodeDocuments(splits->validation).size(), fraction < 0.5 ? 1u : 2u);
    EXPECT_EQ(DecodeDocuments(splits->train).size(), fraction < 0.5 ? 2u : 1u);
  }
  EXPECT_TRUE(TokenizeDocuments(ManyDocuments(2), 0.5, 1).ok());
}

TEST(TokenizeDocumentsTest, RefusesABadFractionOrTooFewDocuments) {
  EXPECT_EQ(TokenizeDocuments(ManyDocuments(10), 0.0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TokenizeDocuments(ManyDocuments(10), 1.0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TokenizeDocuments({}, 0.5, 1).status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Status one = TokenizeDocuments(ManyDocuments(1), 0.5, 1).status();
  EXPECT_EQ(one.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(one.message(), HasSubstr("1 document is too few"));
}

TEST(TextWindowsTest, SampledWindowsAreContiguousRunsOfTheStream) {
  const torch::Tensor stream = torch::arange(1000, torch::kLong) * 3;
  std::mt19937_64 rng(5);
  const torch::Tensor windows = SampleWindows(stream, 16, 32, rng);
  ASSERT_EQ(windows.sizes(), (std::vector<int64_t>{16, 33}));
  EXPECT_EQ(windows.scalar_type(), torch::kLong);
  const torch::Tensor inputs = windows.slice(1, 0, -1);
  const torch::Tensor targets = windows.slice(1, 1);
  // Targets are the inputs shifted by one token of the stream.
  EXPECT_TRUE(torch::equal(targets.slice(1, 0, -1), inputs.slice(1, 1)));
  EXPECT_TRUE(torch::equal(targets - inputs, torch::full_like(inputs, 3)));
  EXPECT_GE(windows.min().item<int64_t>(), 0);
  EXPECT_LE(windows.max().item<int64_t>(), 999 * 3);
  // Different draws from the same generator; same draws from the same seed.
  EXPECT_FALSE(torch::equal(SampleWindows(stream, 16, 32, rng), windows));
  EXPECT_TRUE(torch::equal(SampleWindows(stream, 4, 8, uint64_t{9}),
                           SampleWindows(stream, 4, 8, uint64_t{9})));
  // A stream of exactly context + 1 tokens has one window.
  EXPECT_TRUE(torch::equal(SampleWindows(stream.slice(0, 0, 33), 2, 32, uint64_t{1}),
                           stream.slice(0, 0, 33).unsqueeze(0).expand({2, 33})));
  EXPECT_THROW(SampleWindows(stream.slice(0, 0, 32), 2, 32, uint64_t{1}), c10::Error);
}

TEST(TextWindowsTest, ContiguousWindowsMakeEveryTokenATargetOnce) {
  const torch::Tensor stream = torch::arange(10, torch::kLong);
  const std::vector<torch::Tensor> windows = ContiguousWindows(stream, 4);
  ASSERT_EQ(windows.size(), 3u);
  EXPECT_TRUE(torch::equal(windows[0], torch::tensor({0, 1, 2, 3, 4}, torch::kLong).unsqueeze(0)));
  EXPECT_TRUE(torch::equal(windows[1], torch::tensor({4, 5, 6, 7, 8}, torch::kLong).unsqueeze(0)));
  EXPECT_TRUE(torch::equal(windows[2], torch::tensor({8, 9}, torch::kLong).unsqueeze(0)));
  std::vector<int64_t> targets;
  for (const torch::Tensor& w : windows) {
    ASSERT_EQ(w.dim(), 2);
    for (int64_t i = 1; i < w.size(1); ++i) targets.push_back(w[0][i].item<int64_t>());
  }
  EXPECT_THAT(targets, ElementsAre(1, 2, 3, 4, 5, 6, 7, 8, 9));
  // An exact multiple leaves no short window.
  EXPECT_EQ(ContiguousWindows(torch::arange(9, torch::kLong), 4).size(), 2u);
  EXPECT_TRUE(ContiguousWindows(torch::arange(1, torch::kLong), 4).empty());
}

}  // namespace
}  // namespace offsite
