#ifndef OFFSITE_CLIENT_IMPORT_COMMAND_H_
#define OFFSITE_CLIENT_IMPORT_COMMAND_H_

// `offsite models import`: a Hugging Face checkpoint directory as an Offsite
// model (models/hf_import.h does the mapping; this reads the files).
//
//   offsite models import --family gpt2|opt|convnextv2 DIR [--name NAME]
//       [--description TEXT]     convert, check, upload and register (as `models add`)
//   offsite models import --family F DIR --output FILE   convert only (no server)
//
// DIR holds config.json and either model.safetensors or the shards that
// model.safetensors.index.json lists. For gpt2 and opt, a vocab.json +
// merges.txt pair in DIR is checked (common/bpe_tokenizer.h) and kept in the
// model file's metadata (kMetaTokenizerVocab / kMetaTokenizerMerges of
// models/offsite_tuning.h), so every later step tokenizes text with it.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "models/hf_import.h"

namespace offsite {

// The checkpoint's tensors from DIR/model.safetensors, or from every shard
// DIR/model.safetensors.index.json names (its "weight_map" must agree with
// the shards' contents). Errors name the file.
absl::StatusOr<SafetensorsFile> ReadHfWeights(const std::string& dir);

// Reads DIR (config.json, weights, tokenizer files if any) and returns the
// Offsite model file, checked to load with ModelFromFile.
absl::StatusOr<SafetensorsFile> ConvertHfCheckpointDir(HfFamily family, const std::string& dir);

// The command; `words` start with "import". Returns a process exit code.
int RunModelsImport(const std::vector<std::string>& words);

// Its usage lines, for Usage().
std::string ModelsImportUsage();

}  // namespace offsite

#endif  // OFFSITE_CLIENT_IMPORT_COMMAND_H_
