#include "models/offsite_tuning.h"

#include <google/protobuf/text_format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/proto_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/text_data.h"
#include "models/lora.h"
#include "models/lr_schedule.h"
#include "models/model_arch.h"
#include "models/optimizer.h"

namespace offsite {
namespace {

std::string TensorSha256(const torch::Tensor& tensor) {
  const torch::Tensor t = tensor.detach().cpu().contiguous();
  return Sha256Hex(std::string_view(static_cast<const char*>(t.data_ptr()), t.nbytes()));
}

std::string ShapeString(c10::IntArrayRef shape) { return c10::str(shape); }

bool HasPrefix(const std::string& name, const std::vector<std::string>& prefixes) {
  return std::any_of(prefixes.begin(), prefixes.end(),
                     [&](const std::string& p) { return absl::StartsWith(name, p); });
}

absl::Status ParseMeta(const SafetensorsFile& file, const std::string& key,
                       google::protobuf::Message* message) {
  auto it = file.metadata.find(key);
  if (it == file.metadata.end()) {
    return absl::InvalidArgumentError(absl::StrCat("no '", key, "' in the file's metadata"));
  }
  if (!google::protobuf::TextFormat::ParseFromString(it->second, message)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata '", key, "' is not a valid ", message->GetTypeName()));
  }
  return absl::OkStatus();
}

absl::Status CheckFormat(const SafetensorsFile& file, const std::string& expected) {
  auto it = file.metadata.find(kMetaFormat);
  const std::string found = it == file.metadata.end() ? "" : it->second;
  if (found != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected an Offsite ", expected, " file, found format '", found, "'"));
  }
  return absl::OkStatus();
}

// Task batches: random examples (classification) or random windows of
// context + 1 tokens (language modelling).
struct Batch {
  torch::Tensor input, target;
};

// A pure function of `seed`, so a step draws the same batch whenever it runs.
Batch SampleBatch(const TaskTensors& data, int64_t batch_size, uint64_t seed) {
  if (data.language) {
    const torch::Tensor picked = SampleWindows(data.train_input, batch_size, data.context, seed);
    return {picked.slice(1, 0, -1), picked.slice(1, 1)};
  }
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  const torch::Tensor rows =
      torch::randint(data.train_input.size(0), {batch_size}, gen, torch::dtype(torch::kLong))
          .to(data.train_input.device());
  return {data.train_input.index_select(0, rows), data.train_target.index_select(0, rows)};
}

// The validation split in batches: every example once, or non-overlapping
// windows so that every token after the first is predicted exactly once.
std::vector<Batch> ValidationBatches(const TaskTensors& data, int64_t batch_size) {
  std::vector<Batch> batches;
  if (data.language) {
    // Full windows batched together; the shorter last one alone.
    std::vector<torch::Tensor> windows = ContiguousWindows(data.valid_input, data.context);
    std::vector<torch::Tensor> group;
    auto flush = [&] {
      if (group.empty()) return;
      const torch::Tensor w = torch::cat(group);
      batches.push_back({w.slice(1, 0, -1), w.slice(1, 1)});
      group.clear();
    };
    for (const torch::Tensor& w : windows) {
      if (!group.empty() && (w.size(1) != group.front().size(1) ||
                             static_cast<int64_t>(group.size()) == batch_size)) {
        flush();
      }
      group.push_back(w);
    }
    flush();
    return batches;
  }
  for (int64_t i = 0; i < data.valid_input.size(0); i += batch_size) {
    batches.push_back({data.valid_input.slice(0, i, i + batch_size),
                       data.valid_target.slice(0, i, i + batch_size)});
  }
  return batches;
}

// The step loop Train and DistillEmulator share: AdamW on what requires
// grad, warm-up + cosine, clipping, validation and best-state tracking.
// The state RunSteps checkpoints, under plain keys: "step", "tensor<i>" and
// "best<i>" for the i-th trainable tensor, "optimizer", and the best result.
void WriteTrainState(int64_t step, const std::vector<torch::Tensor>& trainable,
                     torch::optim::Optimizer& optimizer,
                     const std::vector<torch::Tensor>& best_state, const TrainResult& best,
                     torch::serialize::OutputArchive& archive) {
  archive.write("step", torch::tensor(step));
  archive.write("count", torch::tensor(static_cast<int64_t>(trainable.size())));
  for (size_t i = 0; i < trainable.size(); ++i) {
    archive.write(absl::StrCat("tensor", i), trainable[i].detach().cpu());
    archive.write(absl::StrCat("best", i),
                  (best_state.empty() ? trainable[i].detach() : best_state[i]).cpu());
  }
  torch::serialize::OutputArchive optimizer_archive;
  optimizer.save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("best_step", torch::tensor(best.best_step));
  archive.write(
      "best_figures",
      torch::tensor(std::vector<double>{best.best.loss, best.best.accuracy, best.best.perplexity,
                                        static_cast<double>(best.best.count)},
                    torch::kDouble));
}

// Restores what WriteTrainState wrote into the same run's tensors; returns
// the step it was saved after.
absl::StatusOr<int64_t> ReadTrainState(torch::serialize::InputArchive& archive,
                                       std::vector<torch::Tensor>& trainable,
                                       torch::optim::Optimizer& optimizer,
                                       std::vector<torch::Tensor>& best_state, TrainResult& best) {
  torch::Tensor step, count, best_step, figures;
  try {
    archive.read("step", step);
    archive.read("count", count);
    if (count.item<int64_t>() != static_cast<int64_t>(trainable.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint holds ", count.item<int64_t>(), " trainable tensors, this run has ",
          trainable.size(), ": a different model or options"));
    }
    torch::NoGradGuard no_grad;
    best_state.clear();
    for (size_t i = 0; i < trainable.size(); ++i) {
      torch::Tensor value, best_value;
      archive.read(absl::StrCat("tensor", i), value);
      archive.read(absl::StrCat("best", i), best_value);
      if (value.sizes() != trainable[i].sizes()) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint tensor ", i, " has shape ",
                                                       ShapeString(value.sizes()), ", expected ",
                                                       ShapeString(trainable[i].sizes())));
      }
      trainable[i].copy_(value);
      best_state.push_back(best_value.to(trainable[i].device()));
    }
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
    archive.read("best_step", best_step);
    archive.read("best_figures", figures);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint is not a training state: ", e.what_without_backtrace()));
  }
  best.best_step = best_step.item<int64_t>();
  best.best.loss = figures[0].item<double>();
  best.best.accuracy = figures[1].item<double>();
  best.best.perplexity = figures[2].item<double>();
  best.best.count = static_cast<int64_t>(figures[3].item<double>());
  return step.item<int64_t>();
}

absl::StatusOr<TrainResult> RunSteps(torch::nn::Module& model, const TaskTensors& data,
                                     const TrainOptions& options,
                                     const std::function<torch::Tensor(const Batch&)>& loss_fn,
                                     const std::function<Evaluation()>& validate,
                                     const StepCallback& callback) {
  std::vector<torch::Tensor> trainable;
  std::vector<std::string> trainable_names;
  for (const auto& item : model.named_parameters()) {
    if (item.value().requires_grad()) {
      trainable.push_back(item.value());
      trainable_names.push_back(item.key());
    }
  }
  if (trainable.empty())
    return absl::InvalidArgumentError("nothing to train: no tensor requires grad");
  auto optimizer = MakeAdamW(model, options.learning_rate, options.weight_decay, 0.999,
                             /*exclude_grn=*/true);
  TrainResult result;
  result.best.loss = std::numeric_limits<double>::infinity();
  std::vector<torch::Tensor> best_state;
  const TrainCheckpoint& checkpoint = options.checkpoint;
  int64_t first_step = 1;
  if (checkpoint.load) {
    torch::serialize::InputArchive archive;
    const absl::Status loaded = checkpoint.load(archive);
    if (loaded.ok()) {
      OFFSITE_ASSIGN_OR_RETURN(first_step,
                               ReadTrainState(archive, trainable, *optimizer, best_state, result));
      ++first_step;
    } else if (!absl::IsNotFound(loaded)) {
      return loaded;
    }
  }
  DataParallel* dp = options.data_parallel;
  if (dp != nullptr) {
    if (options.batch_size < dp->world_size()) {
      return absl::InvalidArgumentError(absl::StrCat("batch_size ", options.batch_size,
                                                     " is smaller than the ", dp->world_size(),
                                                     " data-parallel ranks"));
    }
    dp->Attach(trainable);
    OFFSITE_RETURN_IF_ERROR(dp->BroadcastFromRankZero());
  }
  auto evaluate = [&](int64_t step, std::map<std::string, double>& metrics) {
    Evaluation eval = validate();
    for (const auto& [k, v] : eval.AsMetrics("valid_")) metrics[k] = v;
    metrics["valid_loss"] = eval.loss;
    if (eval.loss < result.best.loss) {
      result.best = eval;
      result.best_step = step;
      best_state.clear();
      for (const auto& t : trainable) best_state.push_back(t.detach().clone());
    }
  };
  if (first_step == 1) {
    std::map<std::string, double> metrics;
    evaluate(0, metrics);
    if (callback && !callback(0, metrics)) return absl::CancelledError("stopped");
  }
  for (int64_t step = first_step; step <= options.steps; ++step) {
    model.train();
    const double lr =
        WarmupCosine(step - 1, options.warmup_steps, options.steps, options.learning_rate, 0.0);
    SetLearningRate(*optimizer, lr);
    Batch batch = SampleBatch(data, options.batch_size, options.seed * 1000003 + step);
    if (dp != nullptr) {
      const int64_t global = batch.input.size(0);
      const auto [begin, end] = RankShare(global, dp->rank(), dp->world_size());
      batch.input = batch.input.slice(0, begin, end);
      if (batch.target.defined()) batch.target = batch.target.slice(0, begin, end);
      dp->BeginStep(end - begin, global);
    }
    optimizer->zero_grad();
    torch::Tensor loss = loss_fn(batch);
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      return absl::InternalError(absl::StrCat("training loss is ", loss_value, " at step ", step,
                                              "; lower the learning rate"));
    }
    loss.backward();
    if (dp != nullptr) OFFSITE_RETURN_IF_ERROR(dp->AllReduceGradients());
    if (options.clip_norm > 0) torch::nn::utils::clip_grad_norm_(trainable, options.clip_norm);
    optimizer->step();
    std::map<std::string, double> metrics = {{"train_loss", loss_value}, {"lr", lr}};
    if (step == options.steps || (options.eval_interval > 0 && step % options.eval_interval == 0)) {
      evaluate(step, metrics);
    }
    if (callback && !callback(step, metrics)) return absl::CancelledError("stopped");
    const bool keeps_checkpoints = dp == nullptr || dp->rank() == 0;
    if (keeps_checkpoints && step < options.steps && checkpoint.save && checkpoint.due &&
        checkpoint.due(step)) {
      torch::serialize::OutputArchive archive;
      WriteTrainState(step, trainable, *optimizer, best_state, result, archive);
      OFFSITE_RETURN_IF_ERROR(checkpoint.save(archive));
    }
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < trainable.size(); ++i) trainable[i].copy_(best_state[i]);
  return result;
}

}  // namespace

absl::StatusOr<SafetensorsFile> ModelToFile(const v1::ModelArch& arch, BlockModelImpl& model) {
  SafetensorsFile file;
  for (const NamedTensor& t : NamedTensorsOf(model)) {
    file.tensors.push_back({t.name, t.tensor.detach().cpu().contiguous()});
  }
  file.metadata[kMetaFormat] = "model";
  file.metadata[kMetaArch] = TextProto(arch);
  return file;
}

absl::StatusOr<DocumentEncoder> DocumentEncoderOf(const SafetensorsFile& file,
                                                  const v1::ModelArch& arch) {
  DocumentEncoder encoder;
  const auto vocab = file.metadata.find(kMetaTokenizerVocab);
  const auto merges = file.metadata.find(kMetaTokenizerMerges);
  if (vocab != file.metadata.end() || merges != file.metadata.end()) {
    if (vocab == file.metadata.end() || merges == file.metadata.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata has only one of '", kMetaTokenizerVocab, "' and '", kMetaTokenizerMerges, "'"));
    }
    absl::StatusOr<DocumentEncoder> bpe = BpeDocumentEncoder(vocab->second, merges->second);
    if (!bpe.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the file's tokenizer metadata: ", bpe.status().message()));
    }
    encoder = *std::move(bpe);
  }
  // Only a BPE is checked here: a model of fewer than 257 tokens and no
  // tokenizer (e.g. a test's) still loads, as it always did.
  const int64_t model_vocab =
      arch.gpt().vocab_size() > 0 ? arch.gpt().vocab_size() : ByteTokenizer::kVocabSize;
  if (arch.has_gpt() && vocab != file.metadata.end() && model_vocab < encoder.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the model's vocabulary (", model_vocab,
                                                   " tokens) is smaller than its tokenizer, ",
                                                   encoder.name));
  }
  return encoder;
}

std::map<std::string, std::string> TokenizerMetadata(const SafetensorsFile& file) {
  std::map<std::string, std::string> entries;
  for (const char* key : {kMetaTokenizerVocab, kMetaTokenizerMerges}) {
    auto it = file.metadata.find(key);
    if (it != file.metadata.end()) entries[key] = it->second;
  }
  return entries;
}

absl::StatusOr<LoadedModel> ModelFromFile(const SafetensorsFile& file) {
  OFFSITE_RETURN_IF_ERROR(CheckFormat(file, "model"));
  LoadedModel loaded;
  OFFSITE_RETURN_IF_ERROR(ParseMeta(file, kMetaArch, &loaded.arch));
  OFFSITE_ASSIGN_OR_RETURN(loaded.model, MakeBlockModel(loaded.arch));
  std::set<std::string> names;
  for (const NamedTensor& t : file.tensors) names.insert(t.name);
  for (const NamedTensor& t : NamedTensorsOf(*loaded.model)) {
    if (!names.count(t.name)) {
      return absl::InvalidArgumentError(absl::StrCat("model file lacks tensor '", t.name, "'"));
    }
  }
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(file.tensors, *loaded.model));
  OFFSITE_ASSIGN_OR_RETURN(loaded.text_encoder, DocumentEncoderOf(file, loaded.arch));
  loaded.tokenizer_files = TokenizerMetadata(file);
  return loaded;
}

absl::StatusOr<Emulator> MakeEmulator(const v1::ModelArch& arch, BlockModelImpl& full,
                                      const SplitPlan& plan, int64_t new_head_classes,
                                      uint64_t seed) {
  Emulator emulator;
  emulator.arch = arch;
  const bool new_head = new_head_classes > 0;
  if (new_head) {
    if (arch.has_gpt()) {
      return absl::InvalidArgumentError("num_classes: a language model keeps its tied head");
    }
    emulator.arch.set_num_classes(static_cast<int32_t>(new_head_classes));
  }
  torch::manual_seed(seed);  // The new head's initialisation.
  OFFSITE_ASSIGN_OR_RETURN(emulator.model,
                           MakeBlockModel(emulator.arch, plan.EmulatorModelBlocks()));
  emulator.model->to(full.parameters().front().device());
  std::set<std::string> wanted;
  for (const NamedTensor& t : NamedTensorsOf(*emulator.model)) wanted.insert(t.name);
  std::vector<NamedTensor> from_full;
  for (const NamedTensor& t : NamedTensorsOf(full)) {
    if (wanted.count(t.name)) from_full.push_back(t);
  }
  OFFSITE_RETURN_IF_ERROR(
      LoadNamedTensors(from_full, *emulator.model,
                       new_head ? emulator.model->HeadPrefixes() : std::vector<std::string>{}));
  return emulator;
}

absl::StatusOr<SafetensorsFile> MakePackageFile(const Emulator& emulator, const SplitPlan& plan,
                                                const PackageOptions& options,
                                                v1::PackageManifest* manifest) {
  BlockModelImpl& model = *emulator.model;
  manifest->Clear();
  manifest->set_package_id(options.package_id);
  manifest->set_model(options.model_name);
  *manifest->mutable_arch() = emulator.arch;
  manifest->set_num_blocks(static_cast<int32_t>(plan.num_blocks));
  manifest->set_bottom(static_cast<int32_t>(plan.bottom));
  manifest->set_top(static_cast<int32_t>(plan.top));
  for (int64_t b : plan.AdapterBlocks()) manifest->add_adapter_blocks(static_cast<int32_t>(b));
  for (int64_t b : plan.kept_middle) manifest->add_emulator_blocks(static_cast<int32_t>(b));
  manifest->set_task(ModelTask(emulator.arch));
  const bool new_head = options.new_head_classes > 0;
  SafetensorsFile file;
  for (const NamedTensor& t : NamedTensorsOf(model)) {
    const int64_t block = BlockIndexOfName(model, t.name);
    if (block >= 0 && !model.has_block(block)) {
      return absl::InternalError(absl::StrCat("tensor '", t.name, "' of an absent block"));
    }
    v1::TensorInfo::Role role = v1::TensorInfo::SHARED;
    if (block >= 0) {
      role = plan.IsAdapter(block) ? v1::TensorInfo::ADAPTER : v1::TensorInfo::EMULATOR;
    } else if (new_head && HasPrefix(t.name, model.HeadPrefixes())) {
      role = v1::TensorInfo::ADAPTER;
    }
    const torch::Tensor value = t.tensor.detach().cpu().contiguous();
    v1::TensorInfo* info = manifest->add_tensors();
    info->set_name(t.name);
    for (int64_t d : value.sizes()) info->add_shape(d);
    info->set_dtype(SafetensorsDtypeName(value.scalar_type()));
    info->set_sha256(TensorSha256(value));
    info->set_role(role);
    file.tensors.push_back({t.name, value});
  }
  file.metadata = options.tokenizer_files;
  file.metadata[kMetaFormat] = "package";
  file.metadata[kMetaPackageId] = options.package_id;
  file.metadata[kMetaManifest] = TextProto(*manifest);
  return file;
}

absl::StatusOr<OpenedPackage> OpenPackage(const SafetensorsFile& file) {
  OFFSITE_RETURN_IF_ERROR(CheckFormat(file, "package"));
  OpenedPackage package;
  OFFSITE_RETURN_IF_ERROR(ParseMeta(file, kMetaManifest, &package.manifest));
  std::unordered_map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : file.tensors) by_name[t.name] = &t;
  for (const v1::TensorInfo& info : package.manifest.tensors()) {
    auto it = by_name.find(info.name());
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("package lacks tensor '", info.name(), "'"));
    }
    const torch::Tensor& t = it->second->tensor;
    if (std::vector<int64_t>(info.shape().begin(), info.shape().end()) != t.sizes().vec() ||
        SafetensorsDtypeName(t.scalar_type()) != info.dtype()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", info.name(), "' is ", SafetensorsDtypeName(t.scalar_type()),
                       ShapeString(t.sizes()), ", the manifest says ", info.dtype()));
    }
    if (TensorSha256(t) != info.sha256()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", info.name(), "' does not match its SHA-256 in the manifest"));
    }
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("package holds tensor '", by_name.begin()->first, "' not in its manifest"));
  }
  std::vector<int64_t> blocks(package.manifest.adapter_blocks().begin(),
                              package.manifest.adapter_blocks().end());
  blocks.insert(blocks.end(), package.manifest.emulator_blocks().begin(),
                package.manifest.emulator_blocks().end());
  std::sort(blocks.begin(), blocks.end());
  OFFSITE_ASSIGN_OR_RETURN(package.emulator, MakeBlockModel(package.manifest.arch(), blocks));
  if (static_cast<size_t>(package.manifest.tensors_size()) !=
      NamedTensorsOf(*package.emulator).size()) {
    return absl::InvalidArgumentError("package tensors do not cover the emulator's tensors");
  }
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(file.tensors, *package.emulator));
  OFFSITE_ASSIGN_OR_RETURN(package.text_encoder, DocumentEncoderOf(file, package.manifest.arch()));
  return package;
}

absl::StatusOr<SafetensorsFile> ExtractAdapter(const v1::PackageManifest& manifest,
                                               BlockModelImpl& model) {
  MergeLora(model);
  std::unordered_map<std::string, torch::Tensor> tensors;
  for (const NamedTensor& t : NamedTensorsOf(model)) tensors[t.name] = t.tensor;
  SafetensorsFile file;
  for (const v1::TensorInfo& info : manifest.tensors()) {
    if (info.role() != v1::TensorInfo::ADAPTER) continue;
    auto it = tensors.find(info.name());
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model lacks adapter tensor '", info.name(), "'"));
    }
    file.tensors.push_back({info.name(), it->second.detach().cpu().contiguous().clone()});
  }
  file.metadata[kMetaFormat] = "adapter";
  file.metadata[kMetaPackageId] = manifest.package_id();
  return file;
}

absl::Status CheckAdapter(const v1::PackageManifest& manifest, const SafetensorsFile& adapter) {
  OFFSITE_RETURN_IF_ERROR(CheckFormat(adapter, "adapter"));
  auto id = adapter.metadata.find(kMetaPackageId);
  if (id == adapter.metadata.end() || id->second != manifest.package_id()) {
    return absl::InvalidArgumentError(absl::StrCat("adapter is for package '",
                                                   id == adapter.metadata.end() ? "" : id->second,
                                                   "', not '", manifest.package_id(), "'"));
  }
  std::unordered_map<std::string, const v1::TensorInfo*> issued;
  for (const v1::TensorInfo& info : manifest.tensors()) issued[info.name()] = &info;
  std::set<std::string> seen;
  for (const NamedTensor& t : adapter.tensors) {
    auto it = issued.find(t.name);
    if (it == issued.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' is not in the package"));
    }
    const v1::TensorInfo& info = *it->second;
    if (info.role() != v1::TensorInfo::ADAPTER) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name,
                                                     "' is not part of the adapter (",
                                                     v1::TensorInfo::Role_Name(info.role()), ")"));
    }
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' appears twice"));
    }
    if (std::vector<int64_t>(info.shape().begin(), info.shape().end()) != t.tensor.sizes().vec()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has shape ", ShapeString(t.tensor.sizes()),
                       ", the package issued ", absl::StrJoin(info.shape(), "x")));
    }
    if (SafetensorsDtypeName(t.tensor.scalar_type()) != info.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has dtype ",
                                                     SafetensorsDtypeName(t.tensor.scalar_type()),
                                                     ", the package issued ", info.dtype()));
    }
    if (!torch::isfinite(t.tensor).all().item<bool>()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' holds NaN or infinite values"));
    }
  }
  for (const v1::TensorInfo& info : manifest.tensors()) {
    if (info.role() == v1::TensorInfo::ADAPTER && !seen.count(info.name())) {
      return absl::InvalidArgumentError(absl::StrCat("adapter lacks tensor '", info.name(), "'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<BlockModelImpl>> PlugIn(BlockModelImpl& base,
                                                       const v1::PackageManifest& manifest,
                                                       const SafetensorsFile& adapter) {
  OFFSITE_RETURN_IF_ERROR(CheckAdapter(manifest, adapter));
  OFFSITE_ASSIGN_OR_RETURN(std::shared_ptr<BlockModelImpl> full, MakeBlockModel(manifest.arch()));
  // A package with a new head lists the head's tensors among the ADAPTER ones.
  const bool new_head = std::any_of(
      manifest.tensors().begin(), manifest.tensors().end(), [&](const v1::TensorInfo& t) {
        return t.role() == v1::TensorInfo::ADAPTER && BlockIndexOfName(*full, t.name()) < 0;
      });
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(
      NamedTensorsOf(base), *full, new_head ? full->HeadPrefixes() : std::vector<std::string>{}));
  OFFSITE_RETURN_IF_ERROR(LoadNamedTensors(adapter.tensors, *full));
  full->to(base.parameters().front().device());
  return full;
}

void PrepareForTuning(const v1::PackageManifest& manifest, BlockModelImpl& model,
                      const TuneOptions& options) {
  const int64_t top_begin = manifest.num_blocks() - manifest.top();
  std::vector<int64_t> blocks;
  for (int32_t b : manifest.adapter_blocks()) {
    if (!options.top_only || b >= top_begin) blocks.push_back(b);
  }
  std::set<std::string> adapter_names;
  for (const v1::TensorInfo& info : manifest.tensors()) {
    if (info.role() == v1::TensorInfo::ADAPTER) adapter_names.insert(info.name());
  }
  if (options.lora) {
    LoraOptions lora{options.lora_rank, options.lora_alpha, options.lora_dropout};
    for (auto& item : model.named_modules("", /*include_self=*/false)) {
      for (int64_t b : blocks) {
        const std::string prefix = model.BlockPrefix(b);
        if (item.key() == prefix.substr(0, prefix.size() - 1)) EnableLora(*item.value(), lora);
      }
    }
  }
  const std::set<int64_t> chosen(blocks.begin(), blocks.end());
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    const int64_t block = BlockIndexOfName(model, name);
    bool trainable;
    if (block < 0) {
      trainable = adapter_names.count(name) > 0;  // a new head
    } else if (!chosen.count(block)) {
      trainable = false;
    } else if (options.lora) {
      trainable = absl::StrContains(name, "lora_");
    } else {
      trainable = adapter_names.count(name) > 0;
    }
    item.value().set_requires_grad(trainable);
  }
  model.set_recompute_frozen_blocks(options.recompute_emulator);
}

torch::Tensor TaskLoss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
}

std::map<std::string, double> Evaluation::AsMetrics(const std::string& prefix) const {
  if (perplexity > 0) return {{prefix + "perplexity", perplexity}};
  return {{prefix + "accuracy", accuracy}};
}

Evaluation Evaluate(BlockModelImpl& model, const TaskTensors& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  double loss_sum = 0;
  int64_t correct = 0, count = 0;
  for (const Batch& batch : ValidationBatches(data, batch_size)) {
    const torch::Tensor logits = model.forward(batch.input);
    const torch::Tensor flat = logits.reshape({-1, logits.size(-1)});
    const torch::Tensor targets = batch.target.reshape({-1});
    loss_sum +=
        torch::nn::functional::cross_entropy(
            flat, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
    correct += flat.argmax(1).eq(targets).sum().item<int64_t>();
    count += targets.numel();
  }
  model.train(was_training);
  Evaluation eval;
  eval.count = count;
  eval.loss = count ? loss_sum / count : 0;
  eval.accuracy = count ? static_cast<double>(correct) / count : 0;
  if (data.language) eval.perplexity = std::exp(eval.loss);
  return eval;
}

absl::StatusOr<TrainResult> Train(BlockModelImpl& model, const TaskTensors& data,
                                  const TrainOptions& options, const StepCallback& callback) {
  return RunSteps(
      model, data, options,
      [&](const Batch& batch) { return TaskLoss(model.forward(batch.input), batch.target); },
      [&] { return Evaluate(model, data, options.batch_size); }, callback);
}

absl::StatusOr<TrainResult> DistillEmulator(BlockModelImpl& full, BlockModelImpl& emulator,
                                            const SplitPlan& plan, const TaskTensors& data,
                                            const DistillOptions& options,
                                            const StepCallback& callback) {
  SetTrainableBlocks(emulator, plan.kept_middle);
  for (auto& p : full.parameters()) p.set_requires_grad(false);
  full.eval();
  const int64_t n = plan.num_blocks, top_begin = plan.top_begin();
  auto loss_of = [&](const Batch& batch, double* kd_out) {
    torch::Tensor entry, teacher;
    {
      torch::NoGradGuard no_grad;
      entry = full.RunBlocks(full.Embed(batch.input), 0, plan.bottom);
      teacher = full.RunBlocks(entry, plan.bottom, top_begin);
    }
    const torch::Tensor student = emulator.RunBlocks(entry, plan.bottom, top_begin);
    torch::Tensor kd = NormalisedMse(student, teacher);
    if (kd_out) *kd_out = kd.item<double>();
    torch::Tensor loss = options.kd_weight * kd;
    if (options.task_weight > 0) {
      loss = loss +
             options.task_weight *
                 TaskLoss(emulator.Head(emulator.RunBlocks(student, top_begin, n)), batch.target);
    }
    return loss;
  };
  auto validate = [&] {
    torch::NoGradGuard no_grad;
    emulator.eval();
    double loss_sum = 0, kd_sum = 0;
    int64_t batches = 0;
    for (const Batch& batch : ValidationBatches(data, options.train.batch_size)) {
      double kd = 0;
      loss_sum += loss_of(batch, &kd).item<double>();
      kd_sum += kd;
      ++batches;
    }
    Evaluation eval = Evaluate(emulator, data, options.train.batch_size);
    eval.loss = batches ? loss_sum / batches : 0;  // The distillation objective.
    return eval;
  };
  return RunSteps(
      emulator, data, options.train, [&](const Batch& batch) { return loss_of(batch, nullptr); },
      validate, callback);
}

}  // namespace offsite
