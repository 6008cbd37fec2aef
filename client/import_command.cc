#include "client/import_command.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli_args.h"
#include "client/cli_util.h"
#include "client/connection.h"
#include "client/offsite_commands.h"
#include "common/bpe_tokenizer.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "google/protobuf/text_format.h"
#include "models/offsite_tuning.h"

namespace offsite {
namespace {

constexpr char kUsage[] =
    "offsite models import --family gpt2|opt|convnextv2 DIR [--name NAME] [--description TEXT] "
    "[--output FILE]";

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::StatusOr<SafetensorsFile> ReadShards(const std::string& dir, const std::string& index_path) {
  OFFSITE_ASSIGN_OR_RETURN(std::string index_text, ReadFile(index_path));
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(index_text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: ", e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": no \"weight_map\" object of tensor name -> shard file"));
  }
  std::map<std::string, std::string> shard_of;  // tensor -> shard
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string() || shard.get<std::string>().find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor \"", name, "\" must map to a file name in the same directory"));
    }
    shard_of[name] = shard.get<std::string>();
    shards.insert(shard.get<std::string>());
  }
  SafetensorsFile merged;
  for (const std::string& shard : shards) {
    OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile part, ReadSafetensors(JoinPath(dir, shard)));
    for (NamedTensor& t : part.tensors) {
      auto it = shard_of.find(t.name);
      if (it == shard_of.end() || it->second != shard) {
        return absl::InvalidArgumentError(
            absl::StrCat(shard, ": holds tensor \"", t.name, "\", which ", index_path,
                         it == shard_of.end() ? " does not list" : " places in " + it->second));
      }
      shard_of.erase(it);
      merged.tensors.push_back(std::move(t));
    }
  }
  if (!shard_of.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, " lists tensor \"",
                                                   shard_of.begin()->first, "\" in ",
                                                   shard_of.begin()->second, ", which lacks it"));
  }
  return merged;
}

// vocab.json + merges.txt as metadata, if DIR has both.
absl::StatusOr<std::map<std::string, std::string>> ReadTokenizer(HfFamily family,
                                                                 const std::string& dir) {
  std::map<std::string, std::string> metadata;
  if (family == HfFamily::kConvNextV2) return metadata;
  const std::string vocab_path = JoinPath(dir, "vocab.json");
  const std::string merges_path = JoinPath(dir, "merges.txt");
  if (!FileExists(vocab_path) && !FileExists(merges_path)) return metadata;
  OFFSITE_ASSIGN_OR_RETURN(std::string vocab, ReadFile(vocab_path));
  OFFSITE_ASSIGN_OR_RETURN(std::string merges, ReadFile(merges_path));
  absl::StatusOr<BpeTokenizer> tokenizer = BpeTokenizer::FromStrings(vocab, merges);
  if (!tokenizer.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir,
                     ": the tokenizer does not load (remove vocab.json and merges.txt to import "
                     "without it): ",
                     tokenizer.status().message()));
  }
  metadata[kMetaTokenizerVocab] = std::move(vocab);
  metadata[kMetaTokenizerMerges] = std::move(merges);
  return metadata;
}

// Removes a temporary directory and the one file in it when it goes out of scope.
class TempDir {
 public:
  TempDir() = default;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    if (path_.empty()) return;
    if (!file_.empty()) std::remove(file_.c_str());
    rmdir(path_.c_str());
  }
  absl::Status Create() {
    const char* tmp = getenv("TMPDIR");
    std::string pattern =
        absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/offsite-import-XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create a temporary directory ", pattern));
    }
    path_ = pattern;
    return absl::OkStatus();
  }
  std::string File(const std::string& name) { return file_ = JoinPath(path_, name); }

 private:
  std::string path_;
  std::string file_;
};

// "148 tensors, 124439808 parameters; arch: gpt { ... }".
std::string Summary(const SafetensorsFile& file) {
  int64_t parameters = 0;
  for (const NamedTensor& t : file.tensors) parameters += t.tensor.numel();
  v1::ModelArch arch;
  auto text = file.metadata.find(kMetaArch);
  if (text != file.metadata.end())
    google::protobuf::TextFormat::ParseFromString(text->second, &arch);
  return absl::StrCat(file.tensors.size(), " tensors, ", parameters,
                      " parameters; arch: ", arch.ShortDebugString());
}

}  // namespace

absl::StatusOr<SafetensorsFile> ReadHfWeights(const std::string& dir) {
  const std::string single = JoinPath(dir, "model.safetensors");
  const std::string index = JoinPath(dir, "model.safetensors.index.json");
  if (FileExists(single)) return ReadSafetensors(single);
  if (FileExists(index)) return ReadShards(dir, index);
  return absl::NotFoundError(absl::StrCat(dir,
                                          " has neither model.safetensors nor "
                                          "model.safetensors.index.json (with its shards)"));
}

absl::StatusOr<SafetensorsFile> ConvertHfCheckpointDir(HfFamily family, const std::string& dir) {
  OFFSITE_ASSIGN_OR_RETURN(std::string config, ReadFile(JoinPath(dir, "config.json")));
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile weights, ReadHfWeights(dir));
  OFFSITE_ASSIGN_OR_RETURN(auto tokenizer, ReadTokenizer(family, dir));
  OFFSITE_ASSIGN_OR_RETURN(SafetensorsFile file,
                           ImportHfModelFile(family, config, weights, tokenizer));
  weights.tensors.clear();  // Memory back before the check builds a second model.
  // The file must load as any model file does (the server will check it too),
  // its tokenizer included: one that does not fit the model is refused here.
  absl::StatusOr<LoadedModel> loaded = ModelFromFile(file);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(), absl::StrCat(dir, ": ", loaded.status().message()));
  }
  return file;
}

int RunModelsImport(const std::vector<std::string>& words) {
  std::vector<std::string> rest(words.begin() + (words.empty() ? 0 : 1), words.end());
  absl::StatusOr<CliArgs> args = CliArgs::Parse(rest, {"json", "insecure"});
  if (!args.ok()) return Fail(args.status());
  std::vector<std::string> known = {"family", "name", "description", "output", "json"};
  known.insert(known.end(), ConnectionFlags().begin(), ConnectionFlags().end());
  if (absl::Status flags = args->CheckFlags(known); !flags.ok()) return Fail(flags);
  if (args->positional().size() != 1 || !args->Has("family")) return Fail(UsageError(kUsage));
  absl::StatusOr<HfFamily> family = ParseHfFamily(args->Get("family"));
  if (!family.ok()) return Fail(UsageError(absl::StrCat(family.status().message(), "\n", kUsage)));
  const std::string dir = args->positional()[0];

  absl::StatusOr<SafetensorsFile> file = ConvertHfCheckpointDir(*family, dir);
  if (!file.ok()) return Fail(file.status());
  const std::string summary = Summary(*file);

  if (args->Has("output")) {
    const std::string output = args->Get("output");
    if (absl::Status written = WriteSafetensors(output, *file); !written.ok()) return Fail(written);
    std::cout << "wrote " << output << ": " << summary << "\n";
    return kExitOk;
  }
  std::cerr << "converted " << dir << ": " << summary << "\n";
  TempDir temp;
  if (absl::Status created = temp.Create(); !created.ok()) return Fail(created);
  const std::string path = temp.File("model.safetensors");
  if (absl::Status written = WriteSafetensors(path, *file); !written.ok()) return Fail(written);
  file->tensors.clear();

  // Registration is `offsite models add NAME --file PATH`, with this
  // command's connection flags.
  std::vector<std::string> add = {"add", args->Get("name", BaseName(dir)),
                                  absl::StrCat("--file=", path)};
  if (args->Has("description"))
    add.push_back(absl::StrCat("--description=", args->Get("description")));
  std::vector<std::string> passed = ConnectionFlags();
  passed.push_back("json");
  for (const std::string& flag : passed) {
    for (const std::string& value : args->GetAll(flag)) {
      add.push_back(absl::StrCat("--", flag, "=", value));
    }
  }
  return RunModelsCommand(add);
}

std::string ModelsImportUsage() {
  return "  offsite models import --family gpt2|opt|convnextv2 DIR [--name NAME] "
         "[--description TEXT]\n"
         "      [--output FILE]   (a Hugging Face checkpoint; --output converts only, no server)\n";
}

}  // namespace offsite
