#include "common/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

std::string LittleEndian64(uint64_t v) {
  std::string out;
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>(v & 0xff));
    v >>= 8;
  }
  return out;
}

// A file from a hand-written header and raw buffer bytes.
std::string FileBytes(const std::string& header, const std::string& buffer) {
  return LittleEndian64(header.size()) + header + buffer;
}

template <typename T>
std::string RawBytes(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

absl::Status ParseStatus(const std::string& bytes) {
  return ParseSafetensors(bytes, "bad.safetensors").status();
}

// Expects InvalidArgument naming the file and containing every one of `parts`.
void ExpectInvalid(const std::string& header, const std::string& buffer,
                   const std::vector<std::string>& parts) {
  SCOPED_TRACE(header);
  const absl::Status status = ParseStatus(FileBytes(header, buffer));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("bad.safetensors: "));
  for (const std::string& part : parts) EXPECT_THAT(status.message(), HasSubstr(part));
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}

SafetensorsFile SampleFile() {
  SafetensorsFile file;
  file.tensors.push_back({"f32", torch::randn({3, 4})});
  file.tensors.push_back({"f16", torch::randn({5}).to(torch::kHalf)});
  file.tensors.push_back({"bf16", torch::randn({2, 1, 3}).to(torch::kBFloat16)});
  file.tensors.push_back({"i64", torch::arange(-3, 7, torch::kLong).reshape({2, 5})});
  file.tensors.push_back({"f64", torch::randn({2}, torch::kDouble)});
  file.tensors.push_back({"i32", torch::tensor({-7, 1 << 30}, torch::kInt)});
  file.tensors.push_back({"i16", torch::tensor({-300, 300}, torch::kShort)});
  file.tensors.push_back({"i8", torch::tensor({-128, 127}, torch::kChar)});
  file.tensors.push_back({"u8", torch::tensor({0, 255}, torch::kByte)});
  file.tensors.push_back({"bool", torch::tensor({true, false, true})});
  file.tensors.push_back({"scalar", torch::tensor(2.5)});
  file.tensors.push_back({"empty", torch::zeros({0, 3})});
  file.tensors.push_back({"transposed", torch::arange(6, torch::kFloat).reshape({2, 3}).t()});
  file.metadata["format"] = "pt";
  file.metadata["note"] = "naïve \"quoted\"";
  return file;
}

void ExpectSameFile(const SafetensorsFile& actual, const SafetensorsFile& expected) {
  ASSERT_EQ(actual.tensors.size(), expected.tensors.size());
  for (size_t i = 0; i < expected.tensors.size(); ++i) {
    SCOPED_TRACE(expected.tensors[i].name);
    EXPECT_EQ(actual.tensors[i].name, expected.tensors[i].name);
    EXPECT_EQ(actual.tensors[i].tensor.scalar_type(), expected.tensors[i].tensor.scalar_type());
    EXPECT_EQ(actual.tensors[i].tensor.sizes(), expected.tensors[i].tensor.sizes());
    EXPECT_TRUE(torch::equal(actual.tensors[i].tensor, expected.tensors[i].tensor));
  }
  EXPECT_EQ(actual.metadata, expected.metadata);
}

TEST(SafetensorsTest, RoundTripKeepsNamesOrderDtypesValuesAndMetadata) {
  const SafetensorsFile file = SampleFile();
  const std::string path = TempPath("round_trip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, file).ok());
  const absl::StatusOr<SafetensorsFile> loaded = ReadSafetensors(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameFile(*loaded, file);
  EXPECT_TRUE(loaded->tensors.back().tensor.is_contiguous());
}

TEST(SafetensorsTest, LoadedTensorsOwnTheirMemory) {
  SafetensorsFile file;
  file.tensors.push_back({"x", torch::arange(4, torch::kFloat)});
  absl::StatusOr<std::string> bytes = SerializeSafetensors(file);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> loaded = ParseSafetensors(*bytes, "mem");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::fill(bytes->begin(), bytes->end(), '\xff');
  bytes->clear();
  bytes->shrink_to_fit();
  EXPECT_TRUE(torch::equal(loaded->tensors[0].tensor, torch::arange(4, torch::kFloat)));
}

TEST(SafetensorsTest, HeaderIsPaddedWithSpacesToAMultipleOfEight) {
  for (const std::string& name : {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "h"}) {
    SafetensorsFile file;
    file.tensors.push_back({name, torch::ones({1}, torch::kByte)});
    const absl::StatusOr<std::string> bytes = SerializeSafetensors(file);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes->data(), 8);
    EXPECT_EQ(header_size % 8, 0u) << name;
    EXPECT_EQ(bytes->size(), 8 + header_size + 1);
    const std::string header = bytes->substr(8, header_size);
    EXPECT_EQ(header.front(), '{');
    EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));
  }
}

TEST(SafetensorsTest, EmptyFileRoundTrips) {
  const absl::StatusOr<std::string> bytes = SerializeSafetensors(SafetensorsFile{});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, FileBytes("{}      ", ""));
  const absl::StatusOr<SafetensorsFile> loaded = ParseSafetensors(*bytes, "mem");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->tensors.empty());
  EXPECT_TRUE(loaded->metadata.empty());
}

TEST(SafetensorsTest, ParsesHandWrittenBytes) {
  // Tensors listed out of data order and with extra whitespace; results come in data order.
  const std::string header = R"({
    "b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
    "__metadata__": {"k": "v"},
    "a": {"shape": [2], "dtype": "F32", "data_offsets": [0, 8]},
    "c": {"dtype": "BF16", "shape": [1, 1], "data_offsets": [16, 18]},
    "d": {"dtype": "F16", "shape": [0], "data_offsets": [18, 18]}
  }  )";
  const uint16_t bf16_one = 0x3f80;  // 1.0 in bfloat16.
  const std::string buffer =
      RawBytes<float>({1.5f, -2.0f}) + RawBytes<int64_t>({7}) + RawBytes<uint16_t>({bf16_one});
  const absl::StatusOr<SafetensorsFile> file =
      ParseSafetensors(FileBytes(header, buffer), "hand.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->tensors.size(), 4u);
  EXPECT_EQ(file->tensors[0].name, "a");
  EXPECT_TRUE(torch::equal(file->tensors[0].tensor, torch::tensor({1.5f, -2.0f})));
  EXPECT_EQ(file->tensors[1].name, "b");
  EXPECT_EQ(file->tensors[1].tensor.dim(), 0);
  EXPECT_EQ(file->tensors[1].tensor.item<int64_t>(), 7);
  EXPECT_EQ(file->tensors[2].name, "c");
  EXPECT_EQ(file->tensors[2].tensor.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(file->tensors[2].tensor.sizes(), torch::IntArrayRef({1, 1}));
  EXPECT_EQ(file->tensors[2].tensor.item<float>(), 1.0f);
  EXPECT_EQ(file->tensors[3].name, "d");
  EXPECT_EQ(file->tensors[3].tensor.numel(), 0);
  EXPECT_EQ(file->metadata, (std::map<std::string, std::string>{{"k", "v"}}));
}

TEST(SafetensorsTest, RejectsFileShorterThanTheLengthField) {
  const absl::Status status = ParseStatus(std::string("\x02\x00\x00", 3));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("bad.safetensors: file is 3 bytes, shorter than"));
}

TEST(SafetensorsTest, RejectsHeaderLengthBeyondTheFile) {
  const absl::Status status = ParseStatus(LittleEndian64(100) + "{}");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("header length 100 exceeds the 2 bytes"));
}

TEST(SafetensorsTest, RejectsAbsurdHeaderLength) {
  for (uint64_t length : {uint64_t{100'000'001}, ~uint64_t{0}}) {
    const absl::Status status = ParseStatus(LittleEndian64(length) + "{}");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("header length ", length,
                                                         " exceeds the limit of 100000000")));
  }
}

TEST(SafetensorsTest, RejectsInvalidJson) {
  ExpectInvalid(R"({"a": )", "", {"header is not valid JSON", "parse error"});
  ExpectInvalid("{} trailing", "", {"header is not valid JSON"});
  ExpectInvalid("{\"\xff\": 1}", "", {"header is not valid JSON"});  // Not UTF-8.
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotAnObject) {
  ExpectInvalid("[1, 2]", "", {"header [1,2] is not a JSON object"});
  ExpectInvalid("\"x\"", "", {"is not a JSON object"});
}

TEST(SafetensorsTest, RejectsDeeplyNestedJsonCheaply) {
  const std::string deep = std::string(1'000'000, '[') + std::string(1'000'000, ']');
  ExpectInvalid(absl::StrCat(R"({"a": )", deep, "}"), "", {"deeper than a safetensors header"});
  ExpectInvalid(R"({"a": {"dtype": "U8", "shape": [[1]], "data_offsets": [0, 1]}})", "x",
                {"deeper than a safetensors header"});
}

TEST(SafetensorsTest, RejectsEntryThatIsNotAnObject) {
  ExpectInvalid(R"({"w": [1]})", "", {"tensor \"w\": entry [1] is not an object"});
}

TEST(SafetensorsTest, RejectsMissingAndExtraKeys) {
  ExpectInvalid(R"({"w": {"dtype": "U8", "data_offsets": [0, 0]}})", "",
                {"tensor \"w\": missing key \"shape\""});
  ExpectInvalid(R"({"w": {"dtype": "U8", "shape": [0]}})", "",
                {"tensor \"w\": missing key \"data_offsets\""});
  ExpectInvalid(R"({"w": {"shape": [0], "data_offsets": [0, 0]}})", "",
                {"tensor \"w\": missing key \"dtype\""});
  ExpectInvalid(R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0], "x": 1}})", "",
                {"tensor \"w\": unexpected key \"x\""});
}

TEST(SafetensorsTest, RejectsUnknownDtype) {
  ExpectInvalid(R"({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", "x",
                {"tensor \"w\": dtype \"F8_E4M3\" is not supported"});
  ExpectInvalid(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 1]}})", "x",
                {"tensor \"w\": dtype 4 is not supported"});
  ExpectInvalid(R"({"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})", "xxxx",
                {"dtype \"f32\" is not supported"});
}

TEST(SafetensorsTest, RejectsBadShapes) {
  for (const std::string& shape : {"3", "[-1]", "[1.5]", "[\"2\"]", "null", "[1, true]",
                                   "[9223372036854775808]", "[99999999999999999999999]"}) {
    ExpectInvalid(
        absl::StrCat(R"({"w": {"dtype": "U8", "shape": )", shape, R"(, "data_offsets": [0, 1]}})"),
        "x", {"tensor \"w\": shape ", "is not an array of non-negative integers"});
  }
}

TEST(SafetensorsTest, RejectsShapeWhoseProductOverflows) {
  ExpectInvalid(
      R"({"w": {"dtype": "U8", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]}})", "",
      {"tensor \"w\": shape [4294967296,4294967296,0] has too many elements"});
  // numel fits but numel * 8 bytes does not.
  ExpectInvalid(
      R"({"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", "",
      {"tensor \"w\": data_offsets [0,0] span 0 bytes but dtype F64"});
}

TEST(SafetensorsTest, AcceptsEmptyTensorWithHugeDimensions) {
  // No elements and no overflow in the element count, so valid, as for the reference.
  const absl::StatusOr<SafetensorsFile> file = ParseSafetensors(
      FileBytes(R"({"w": {"dtype": "U8", "shape": [0, 4611686018427387904, 4611686018427387904],
                          "data_offsets": [0, 0]}})",
                ""),
      "huge.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors.at(0).tensor.numel(), 0);
  EXPECT_EQ(file->tensors.at(0).tensor.size(2), int64_t{1} << 62);
}

TEST(SafetensorsTest, RejectsBadDataOffsets) {
  for (const std::string& offsets :
       {"[0]", "[0, 1, 2]", "[-1, 0]", "[1, 0]", "[0.0, 1]", "\"0,1\"", "[0, null]"}) {
    ExpectInvalid(
        absl::StrCat(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": )", offsets, "}}"), "x",
        {"tensor \"w\": data_offsets ", "is not [begin, end] with 0 <= begin <= end"});
  }
}

TEST(SafetensorsTest, RejectsEndBeyondTheBuffer) {
  ExpectInvalid(R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", "xyz",
                {"tensor \"w\": data_offsets [0,4] end beyond the data buffer of 3 bytes"});
}

TEST(SafetensorsTest, RejectsSizeThatDoesNotMatchShapeAndDtype) {
  ExpectInvalid(R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})",
                std::string(12, '\0'),
                {"tensor \"w\": data_offsets [0,12] span 12 bytes but dtype F32 shape [2,2] needs "
                 "4 x 4 bytes"});
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectInvalid(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "b": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}})",
                "12345", {"tensor \"b\": data_offsets [3, 5] overlap tensor \"a\" at [0, 4]"});
  ExpectInvalid(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "b": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})",
                "1234", {"overlap tensor"});
}

TEST(SafetensorsTest, RejectsBufferBytesInNoTensor) {
  ExpectInvalid(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", "1234",
                {"tensor \"a\": data_offsets [2, 4] leave bytes [0, 2) of the data buffer in no "
                 "tensor"});
  ExpectInvalid(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})", "1234",
                {"bytes [2, 4) at the end of the data buffer belong to no tensor"});
}

TEST(SafetensorsTest, RejectsDuplicateNamesAndKeys) {
  ExpectInvalid(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                    "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                "12", {"duplicate tensor name \"a\""});
  ExpectInvalid(R"({"a": {"dtype": "U8", "dtype": "I8", "shape": [1], "data_offsets": [0, 1]}})",
                "1", {"tensor \"a\": duplicate key \"dtype\""});
  ExpectInvalid(R"({"__metadata__": {"k": "1", "k": "2"}})", "",
                {"\"__metadata__\": duplicate key \"k\""});
}

TEST(SafetensorsTest, RejectsMetadataThatIsNotStringToString) {
  ExpectInvalid(R"({"__metadata__": {"k": 1}})", "",
                {"__metadata__ value 1 for key \"k\" is not a string"});
  ExpectInvalid(R"({"__metadata__": ["k"]})", "", {"__metadata__ [\"k\"] is not an object"});
}

TEST(SafetensorsTest, RejectsBoolBytesOtherThanZeroOrOne) {
  ExpectInvalid(R"({"b": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}})",
                std::string("\x01\x00\x02", 3),
                {"tensor \"b\": BOOL byte 2 at offset 2 is neither 0 nor 1"});
}

TEST(SafetensorsTest, EveryTruncationIsAnErrorNotACrash) {
  const absl::StatusOr<std::string> bytes = SerializeSafetensors(SampleFile());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  for (size_t length = 0; length < bytes->size(); ++length) {
    const absl::Status status = ParseStatus(bytes->substr(0, length));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << length << ": " << status;
  }
}

TEST(SafetensorsTest, CorruptedBytesNeverCrash) {
  const absl::StatusOr<std::string> bytes = SerializeSafetensors(SampleFile());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  std::mt19937 rng(42);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string corrupt = *bytes;
    const int flips = 1 + trial % 4;
    for (int i = 0; i < flips; ++i) {
      corrupt[rng() % corrupt.size()] = static_cast<char>(rng());
    }
    const absl::Status status = ParseStatus(corrupt);
    if (!status.ok()) EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
}

TEST(SafetensorsTest, ReadingAMissingFileIsNotFound) {
  const absl::Status status = ReadSafetensors(TempPath("does_not_exist.safetensors")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

TEST(SafetensorsTest, SerializeRejectsWhatTheFormatCannotHold) {
  const auto error = [](SafetensorsFile file) { return SerializeSafetensors(file).status(); };
  SafetensorsFile file;
  file.tensors.push_back({"a", torch::ones({1})});
  file.tensors.push_back({"a", torch::ones({1})});
  EXPECT_THAT(error(file).message(), HasSubstr("tensor \"a\": name appears twice"));

  file.tensors = {{"__metadata__", torch::ones({1})}};
  EXPECT_THAT(error(file).message(), HasSubstr("reserved for metadata"));

  file.tensors = {{"u", at::Tensor()}};
  EXPECT_THAT(error(file).message(), HasSubstr("tensor \"u\": tensor is undefined"));

  file.tensors = {{"c", torch::zeros({2}, torch::kComplexFloat)}};
  EXPECT_THAT(error(file).message(),
              HasSubstr("tensor \"c\": dtype ComplexFloat is not supported"));

  file.tensors = {{"bad\xff", torch::ones({1})}};
  EXPECT_THAT(error(file).message(), HasSubstr("not valid UTF-8"));
  EXPECT_EQ(error(file).code(), absl::StatusCode::kInvalidArgument);
}

// The first Python that imports torch, or "" if none does.
std::string PythonWithTorch() {
  for (const char* python : {"python3", "/usr/bin/python3"}) {
    const std::string command = absl::StrCat(python, " -c 'import torch' >/dev/null 2>&1");
    if (std::system(command.c_str()) == 0) return python;
  }
  return "";
}

// Reads the format with struct/json/torch.frombuffer only (not our code, not the
// safetensors package), checks the values SampleValues() writes, then writes a
// file the same way for us to read back.
constexpr char kPythonChecker[] = R"PY(
import json, struct, sys, torch
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
          "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}

def expected(dtype):
    if dtype == torch.bool:
        return torch.arange(6).reshape(2, 3) % 2 == 1
    return (torch.arange(6).reshape(2, 3) * (0.5 if dtype.is_floating_point else 1)).to(dtype)

data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
assert (8 + n) % 8 == 0, n
header = json.loads(data[8:8 + n].decode("utf-8"))
buf = data[8 + n:]
assert header.pop("__metadata__") == {"writer": "offsite", "unicode": "日本"}
assert sorted(NAMES[DTYPES[e["dtype"]]] for e in header.values()) == sorted(DTYPES), header
for name, e in header.items():
    b, end = e["data_offsets"]
    t = torch.frombuffer(bytearray(buf[b:end]), dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
    assert name == e["dtype"], name
    assert torch.equal(t, expected(t.dtype)), (name, t)

header, blobs, offset = {"__metadata__": {"from": "python"}}, [], 0
for name, dtype in DTYPES.items():
    raw = expected(dtype).reshape(-1).view(torch.uint8).numpy().tobytes()
    header[name] = {"dtype": name, "shape": [2, 3], "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
text = json.dumps(header).encode("utf-8")
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
print("python check ok")
)PY";

torch::Tensor SampleValues(torch::ScalarType dtype) {
  const torch::Tensor base = torch::arange(6, torch::kLong).reshape({2, 3});
  if (dtype == torch::kBool) return base.remainder(2) == 1;
  if (torch::isFloatingType(dtype)) return (base * 0.5).to(dtype);
  return base.to(dtype);
}

TEST(SafetensorsTest, PythonReferenceReadsOurFilesAndWeReadItsFiles) {
  const std::string python = PythonWithTorch();
  if (python.empty()) GTEST_SKIP() << "no python3 with torch";
  const std::vector<std::pair<std::string, torch::ScalarType>> dtypes = {
      {"F64", torch::kDouble},    {"F32", torch::kFloat}, {"F16", torch::kHalf},
      {"BF16", torch::kBFloat16}, {"I64", torch::kLong},  {"I32", torch::kInt},
      {"I16", torch::kShort},     {"I8", torch::kChar},   {"U8", torch::kByte},
      {"BOOL", torch::kBool}};
  SafetensorsFile file;
  for (const auto& [name, dtype] : dtypes) file.tensors.push_back({name, SampleValues(dtype)});
  file.metadata = {{"writer", "offsite"}, {"unicode", "日本"}};
  const std::string ours = TempPath("from_cpp.safetensors");
  const std::string theirs = TempPath("from_python.safetensors");
  const std::string script = TempPath("check_safetensors.py");
  ASSERT_TRUE(WriteSafetensors(ours, file).ok());
  std::ofstream(script) << kPythonChecker;

  const std::string command = absl::StrCat(python, " ", script, " ", ours, " ", theirs);
  ASSERT_EQ(std::system(command.c_str()), 0) << command;

  const absl::StatusOr<SafetensorsFile> loaded = ReadSafetensors(theirs);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->tensors.size(), dtypes.size());
  for (size_t i = 0; i < dtypes.size(); ++i) {
    EXPECT_EQ(loaded->tensors[i].name, dtypes[i].first);
    EXPECT_TRUE(torch::equal(loaded->tensors[i].tensor, SampleValues(dtypes[i].second)))
        << dtypes[i].first;
  }
  EXPECT_EQ(loaded->metadata, (std::map<std::string, std::string>{{"from", "python"}}));
}

}  // namespace
}  // namespace offsite
