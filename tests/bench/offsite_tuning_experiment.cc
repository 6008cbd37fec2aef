// The Offsite-Tuning paper's table on CPU-sized models, with the same core
// functions the server and the client use (models/offsite_tuning.h):
//   full zero-shot, emulator zero-shot, full fine-tuning, OT emulator,
//   OT plug-in.
//
//   offsite_tuning_experiment --task language|vision|vision-shift [--seed N] [--threads N]
//       [--pretrain-steps N] [--distill-steps N] [--tune-steps N] [--splits B-K-T,...]
//       [--layers N] [--tune all|lora|top-only] [--user-train-subset N]
//       [--convnext DEPTHS:DIMS:STEM] [--shift-invert 0|1] [--owner-cache FILE]
//       [--owner-pretrain supervised|fcmae]
//
// The model is pretrained and fully fine-tuned once; each split (default
// 2-2-2) then gets its own emulator, distillation and tuned adapter.
// --layers sets the language model's depth (default 8), so the middle that
// the emulator replaces can be made deeper. --tune picks how the data owner
// tunes the adapter, as `offsite offsite tune` does (--lora, --top-only).
// --user-train-subset (vision) shrinks the data owner's labelled set: the
// first N training images, of which about half are of classes 5-9.
// --convnext sets the vision model's shape, e.g. 12:128:4 for an isotropic
// ConvNeXt (one stage of 12 blocks, 128 wide, 4x4 patches) whose middle holds
// most of its weights, as a ViT's does (default 2,2,4,2:32,64,128,256:2).
// --owner-cache FILE keeps the owner's pretrained model: the first run writes
// it, later runs of the same task, shape, seed and pretraining steps read it
// instead of pretraining again (the longest phase; the rest of a run gives the
// same figures either way).
// --owner-pretrain fcmae (vision): the owner pretrains the ConvNeXt V2 without
// labels, by FCMAE (models/fcmae.h), on the training images the data owner
// does not hold (all classes: images from --user-train-subset's end on), and
// distils the emulator on them; the model's head is never trained, so the
// data owner's new head and adapter are all the task sees. The mask grid is
// the encoder's total stride: use a 3-stage shape at 32 px (--convnext
// 2,2,6:40,80,160:2, the fcmae job's default, gives a 4x4 grid).
//
// language: a GPT decoder pretrained by the owner on one fortunes collection
//   (cookie), distilled on it, and tuned by the data owner on another
//   (science); perplexity on held-out science documents.
// vision: a ConvNeXt V2 pretrained (supervised) by the owner on Fashion-MNIST
//   classes 0-4; the data owner's task is classes 5-9 with a new head;
//   accuracy on the test split's classes 5-9. No zero-shot rows (new head).
// vision-shift: the same label space in another domain, as the language task:
//   the owner pretrains on the first 30,000 Fashion-MNIST training images as
//   they are (10 classes); the data owner's images are the next 10,000,
//   rendered into MIC's target domain (inverted, cluttered, blurred, noisy;
//   common/domain_shift.h); the owner's head is kept, so zero-shot rows apply;
//   accuracy on the rendered test split. --shift-invert 0 keeps the items
//   light on dark (clutter, blur and noise only): a milder shift that the
//   owner's classifier already half handles.

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/domain_shift.h"
#include "common/image_data.h"
#include "common/runtime.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "common/task_data.h"
#include "models/fcmae.h"
#include "models/lr_schedule.h"
#include "models/model_arch.h"
#include "models/offsite_tuning.h"
#include "models/optimizer.h"

namespace offsite {
namespace {

struct Split {
  int64_t bottom = 2, emulator_blocks = 2, top = 2;
};

struct ConvNextShape {
  std::vector<int64_t> depths = {2, 2, 4, 2}, dims = {32, 64, 128, 256};
  int64_t stem_stride = 2;
};

struct Args {
  std::string task = "language";
  uint64_t seed = 0;
  int threads = 0;
  int64_t pretrain_steps = -1, distill_steps = -1, tune_steps = -1;
  int64_t layers = -1;                    // language only; -1: the default depth, 8
  int64_t user_train_subset = -1;         // vision only; -1: the default, 10000
  std::optional<ConvNextShape> convnext;  // vision only; unset: the default shape
  std::optional<bool> shift_invert;       // vision-shift only; unset: true
  std::string owner_cache;                // empty: always pretrain
  bool fcmae_owner = false;               // vision only
  TuneOptions adapter_tuning;
  std::vector<Split> splits = {Split()};
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

StepCallback Progress(const std::string& phase, int64_t total) {
  return [phase, total](int64_t step, const std::map<std::string, double>& metrics) {
    if (metrics.count("valid_loss")) {
      std::fprintf(stderr, "  %s %lld/%lld valid_loss %.4f\n", phase.c_str(),
                   static_cast<long long>(step), static_cast<long long>(total),
                   metrics.at("valid_loss"));
    }
    return true;
  };
}

double Figure(const Evaluation& eval, bool language) {
  return language ? eval.perplexity : 100.0 * eval.accuracy;
}

// The data owner's task for vision-shift: images [first, end) of `data`'s
// training split and its test split, rendered into the target domain and
// normalised with the rendered training images' statistics.
TaskTensors UserDomainTask(const v1::ImageData& data, int64_t first, uint64_t seed, bool invert) {
  ImageDataSet set = LoadImageData(data, torch::kCPU).value();
  DomainShiftOptions shift;
  shift.seed = seed;
  shift.invert = invert;
  auto render = [&](const torch::Tensor& images, int64_t first_index) {
    // Back to [0, 1] pixels (LoadImageData normalised them), then rendered.
    const torch::Tensor pixels = (images * set.std[0] + set.mean[0]).clamp(0, 1).contiguous();
    return RenderTargetDomain(pixels, shift, first_index);
  };
  const torch::Tensor train = render(set.train_images.slice(0, first), 0);
  const torch::Tensor valid = render(set.test_images, train.size(0));
  const torch::Tensor mean = train.mean(), std = train.std();
  TaskTensors task;
  task.train_input = ((train - mean) / std).contiguous(torch::MemoryFormat::ChannelsLast);
  task.train_target = set.train_labels.slice(0, first);
  task.valid_input = ((valid - mean) / std).contiguous(torch::MemoryFormat::ChannelsLast);
  task.valid_target = set.test_labels;
  task.num_classes = set.num_classes;
  return task;
}

// The owner's self-supervised pretraining: FCMAE on `images` (unlabelled),
// with the ConvNeXt V2 recipe (AdamW, betas (0.9, 0.95), no decay on 1-D
// parameters, warm-up then cosine), the encoder's weights then copied into
// `full`, whose head stays as initialised. Progress: the masked-patch loss on
// `held_out` under a fixed mask.
absl::Status PretrainFcmae(BlockModelImpl& full, const v1::ModelArch& arch,
                           const torch::Tensor& images, const torch::Tensor& held_out,
                           const TrainOptions& options) {
  OFFSITE_ASSIGN_OR_RETURN(ConvNextV2Config config,
                           ResolveArch(arch.convnext_v2(), images.size(1), 0));
  torch::manual_seed(options.seed);
  OFFSITE_ASSIGN_OR_RETURN(Fcmae fcmae, MakeFcmae(config, FcmaeOptions{}));
  OFFSITE_RETURN_IF_ERROR(fcmae->ValidateImageSize(images.size(2), images.size(3)));
  std::unique_ptr<torch::optim::AdamW> optimizer =
      MakeAdamW(*fcmae, options.learning_rate, options.weight_decay, 0.95, false);
  const torch::Tensor mask = fcmae->RandomMask(held_out);
  auto held_out_loss = [&] {
    torch::NoGradGuard no_grad;
    fcmae->eval();
    const double loss = fcmae->forward(held_out, mask).loss.item<double>();
    fcmae->train();
    return loss;
  };
  std::fprintf(stderr, "FCMAE on %lld images, mask patch %lld px: held-out loss %.4f\n",
               static_cast<long long>(images.size(0)), static_cast<long long>(fcmae->patch_size()),
               held_out_loss());
  const int64_t n = images.size(0);
  for (int64_t step = 0; step < options.steps; ++step) {
    SetLearningRate(*optimizer,
                    WarmupCosine(step, options.warmup_steps, options.steps, options.learning_rate));
    const torch::Tensor batch = torch::randint(n, {options.batch_size}, torch::kLong);
    FcmaeOutput out = fcmae->forward(images.index_select(0, batch));
    optimizer->zero_grad();
    out.loss.backward();
    optimizer->step();
    if ((step + 1) % options.eval_interval == 0 || step + 1 == options.steps) {
      std::fprintf(stderr, "  fcmae %lld/%lld loss %.4f held-out %.4f\n",
                   static_cast<long long>(step + 1), static_cast<long long>(options.steps),
                   out.loss.item<double>(), held_out_loss());
    }
  }
  return LoadNamedTensors(NamedTensorsOf(*fcmae->encoder()), full);
}

int Run(const Args& args) {
  const bool language = args.task == "language";
  const bool shift = args.task == "vision-shift";
  v1::ModelArch arch;
  v1::TaskData owner_data, user_data;
  TrainOptions pretrain, tune;
  int64_t distill_steps;
  if (language) {
    arch.mutable_gpt()->set_n_layer(args.layers >= 0 ? args.layers : 8);
    arch.mutable_gpt()->set_n_embd(128);
    arch.mutable_gpt()->set_n_head(4);
    arch.mutable_gpt()->set_n_positions(64);
    owner_data.mutable_text()->set_path("/usr/share/games/fortunes/cookie");
    user_data.mutable_text()->set_path("/usr/share/games/fortunes/science");
    pretrain.steps = 1500;
    pretrain.learning_rate = 2e-3;
    pretrain.weight_decay = 0.1;
    pretrain.warmup_steps = 100;
    tune.steps = 400;
    tune.learning_rate = 1e-3;
    distill_steps = 300;
  } else {
    const ConvNextShape shape = args.convnext.value_or(ConvNextShape());
    for (int64_t d : shape.depths) arch.mutable_convnext_v2()->add_depths(d);
    for (int64_t d : shape.dims) arch.mutable_convnext_v2()->add_dims(d);
    arch.mutable_convnext_v2()->set_stem_stride(shape.stem_stride);
    if (shift) {
      arch.set_num_classes(10);
      owner_data.mutable_images()->set_train_subset(30000);
      owner_data.mutable_images()->set_test_subset(5000);
      user_data.mutable_images()->set_train_subset(40000);  // The last 10,000 are kept.
      user_data.mutable_images()->set_test_subset(5000);
    } else {
      if (args.fcmae_owner) {
        // All ten classes, no labels used: the head is never trained.
        arch.set_num_classes(10);
      } else {
        arch.set_num_classes(5);
        for (int c : {0, 1, 2, 3, 4}) owner_data.mutable_images()->add_classes(c);
      }
      owner_data.mutable_images()->set_test_subset(5000);
      for (int c : {5, 6, 7, 8, 9}) user_data.mutable_images()->add_classes(c);
      // ~5000 of classes 5-9 by default.
      user_data.mutable_images()->set_train_subset(
          args.user_train_subset >= 0 ? args.user_train_subset : 10000);
    }
    pretrain.steps = 1500;
    pretrain.learning_rate = 2e-3;
    pretrain.weight_decay = 0.05;
    pretrain.warmup_steps = 100;
    tune.steps = 300;
    tune.learning_rate = 1e-3;
    distill_steps = 300;
  }
  pretrain.batch_size = tune.batch_size = 32;
  if (args.fcmae_owner) {
    // 800 x 128 = 102,400 image-steps, as the 1,000-label FCMAE rows of
    // docs/results/convnext.md.
    pretrain.steps = 800;
    pretrain.warmup_steps = 80;
    pretrain.batch_size = 128;
  }
  if (args.pretrain_steps >= 0) pretrain.steps = args.pretrain_steps;
  if (args.tune_steps >= 0) tune.steps = args.tune_steps;
  if (args.distill_steps >= 0) distill_steps = args.distill_steps;
  pretrain.eval_interval = std::max<int64_t>(1, pretrain.steps / 5);
  tune.eval_interval = std::max<int64_t>(1, tune.steps / 5);
  pretrain.seed = args.seed;
  tune.seed = args.seed + 1;
  tune.weight_decay = 0.01;
  tune.warmup_steps = tune.steps / 10;
  const torch::Device cpu(torch::kCPU);
  const int64_t context = language ? arch.gpt().n_positions() : 0;
  // What the owner's model depends on, so that a cache made for another
  // configuration is refused, and at once, before the data is loaded.
  const std::string owner_key =
      absl::StrCat(args.task, args.fcmae_owner ? " (fcmae)" : "", "; seed ", args.seed, "; ",
                   pretrain.steps, " steps; ", arch.ShortDebugString());
  std::optional<SafetensorsFile> cached_owner;
  if (!args.owner_cache.empty() && std::filesystem::exists(args.owner_cache)) {
    absl::StatusOr<SafetensorsFile> read = ReadSafetensors(args.owner_cache);
    if (!read.ok()) {
      std::fprintf(stderr, "--owner-cache: %s\n", read.status().ToString().c_str());
      return 2;
    }
    const std::string made_for = read->metadata["owner_model"];
    if (made_for != owner_key) {
      std::fprintf(stderr, "--owner-cache: %s holds the owner's model of \"%s\", not \"%s\"\n",
                   args.owner_cache.c_str(), made_for.c_str(), owner_key.c_str());
      return 2;
    }
    cached_owner = *std::move(read);
  }
  TaskTensors owner = LoadTaskData(owner_data, context, cpu, "owner").value();
  if (args.fcmae_owner) {
    // The owner never holds the data owner's training images.
    const int64_t first = user_data.images().train_subset();
    owner.train_input = owner.train_input.slice(0, first);
    owner.train_target = owner.train_target.slice(0, first);
  }
  const bool invert = args.shift_invert.value_or(true);
  TaskTensors user = shift ? UserDomainTask(user_data.images(), 30000, args.seed + 100, invert)
                           : LoadTaskData(user_data, context, cpu, "user").value();

  const double t0 = Now();
  torch::manual_seed(args.seed);
  auto full = MakeBlockModel(arch).value();
  // Every split is planned before the long pretraining, so a split that does
  // not fit the model's blocks is refused at once.
  std::vector<SplitPlan> plans;
  for (const Split& split : args.splits) {
    absl::StatusOr<SplitPlan> plan =
        PlanSplit(full->num_blocks(), split.bottom, split.top, split.emulator_blocks);
    if (!plan.ok()) {
      std::fprintf(stderr, "--splits: %s\n", plan.status().ToString().c_str());
      return 2;
    }
    plans.push_back(*std::move(plan));
  }
  if (cached_owner.has_value()) {
    const absl::Status loaded = LoadNamedTensors(cached_owner->tensors, *full);
    if (!loaded.ok()) {
      std::fprintf(stderr, "--owner-cache: %s\n", loaded.ToString().c_str());
      return 2;
    }
    std::fprintf(stderr, "owner's model read from %s\n", args.owner_cache.c_str());
  } else {
    std::fprintf(stderr, "pretraining (%lld steps)\n", static_cast<long long>(pretrain.steps));
    if (args.fcmae_owner) {
      const absl::Status pretrained = PretrainFcmae(*full, arch, owner.train_input,
                                                    owner.valid_input.slice(0, 0, 256), pretrain);
      if (!pretrained.ok()) {
        std::fprintf(stderr, "--owner-pretrain fcmae: %s\n", pretrained.ToString().c_str());
        return 2;
      }
    } else {
      (void)Train(*full, owner, pretrain, Progress("pretrain", pretrain.steps)).value();
    }
    if (!args.owner_cache.empty()) {
      SafetensorsFile file{NamedTensorsOf(*full), {{"owner_model", owner_key}}};
      const absl::Status written = WriteSafetensors(args.owner_cache, file);
      if (!written.ok()) std::fprintf(stderr, "--owner-cache: %s\n", written.ToString().c_str());
    }
  }
  // FCMAE trains no task, so its owner has no figure of its own.
  const std::optional<Evaluation> owner_eval =
      args.fcmae_owner ? std::nullopt : std::make_optional(Evaluate(*full, owner, 64));

  const int64_t new_head = language || shift ? 0 : 5;
  std::printf("| row | %s |\n| --- | --- |\n",
              language ? "perplexity (lower is better)" : "accuracy %");
  if (!new_head) {
    std::printf("| full zero-shot | %.2f |\n", Figure(Evaluate(*full, user, 64), language));
  }

  // Full fine-tuning: every parameter, new head for vision.
  v1::ModelArch task_arch = arch;
  if (new_head) task_arch.set_num_classes(static_cast<int32_t>(new_head));
  torch::manual_seed(args.seed + 2);
  auto fine_tuned = MakeBlockModel(task_arch).value();
  const std::vector<NamedTensor> base = NamedTensorsOf(*full);
  const std::vector<std::string> head =
      new_head ? fine_tuned->HeadPrefixes() : std::vector<std::string>{};
  (void)LoadNamedTensors(base, *fine_tuned, head);
  std::fprintf(stderr, "full fine-tuning (%lld steps)\n", static_cast<long long>(tune.steps));
  (void)Train(*fine_tuned, user, tune, Progress("full-ft", tune.steps)).value();
  std::printf("| full fine-tuning | %.2f |\n", Figure(Evaluate(*fine_tuned, user, 64), language));

  for (size_t i = 0; i < args.splits.size(); ++i) {
    const Split& split = args.splits[i];
    const SplitPlan& plan = plans[i];
    const std::string name = absl::StrCat(split.bottom, "-", split.emulator_blocks, "-", split.top);
    Emulator emulator = MakeEmulator(arch, *full, plan, 0, args.seed).value();
    if (!new_head) {
      std::printf("| %s emulator zero-shot (layer-drop only) | %.2f |\n", name.c_str(),
                  Figure(Evaluate(*emulator.model, user, 64), language));
    }
    if (distill_steps > 0) {
      DistillOptions distill;
      distill.train = pretrain;
      distill.train.steps = distill_steps;
      distill.train.learning_rate = 1e-3;
      distill.train.warmup_steps = distill_steps / 10;
      distill.train.eval_interval = std::max<int64_t>(1, distill_steps / 5);
      distill.task_weight = language ? 1.0 : 0.0;
      distill.kd_weight = language ? 30.0 : 1.0;
      std::fprintf(stderr, "distilling %s (%lld steps)\n", name.c_str(),
                   static_cast<long long>(distill_steps));
      (void)DistillEmulator(*full, *emulator.model, plan, owner, distill,
                            Progress("distill", distill_steps))
          .value();
      if (!new_head) {
        std::printf("| %s emulator zero-shot (distilled) | %.2f |\n", name.c_str(),
                    Figure(Evaluate(*emulator.model, user, 64), language));
      }
    }

    // Offsite-Tuning: the package (new head for vision), tuned adapter.
    Emulator packaged = MakeEmulator(arch, *full, plan, new_head, args.seed + 2).value();
    std::vector<NamedTensor> middle;
    for (const auto& item : emulator.model->named_parameters()) {
      const int64_t b = BlockIndexOfName(*emulator.model, item.key());
      if (b >= 0 && !plan.IsAdapter(b)) middle.push_back({item.key(), item.value()});
    }
    (void)LoadNamedTensors(middle, *packaged.model);
    PackageOptions options;
    options.package_id = "experiment";
    options.new_head_classes = new_head;
    v1::PackageManifest manifest;
    SafetensorsFile file = MakePackageFile(packaged, plan, options, &manifest).value();
    OpenedPackage opened = OpenPackage(file).value();
    PrepareForTuning(opened.manifest, *opened.emulator, args.adapter_tuning);
    std::fprintf(stderr, "offsite-tuning the %s adapter (%lld steps)\n", name.c_str(),
                 static_cast<long long>(tune.steps));
    (void)Train(*opened.emulator, user, tune, Progress("ot", tune.steps)).value();
    std::printf("| %s OT emulator (emulator + tuned adapter) | %.2f |\n", name.c_str(),
                Figure(Evaluate(*opened.emulator, user, 64), language));
    SafetensorsFile adapter = ExtractAdapter(opened.manifest, *opened.emulator).value();
    auto plugged = PlugIn(*full, opened.manifest, adapter).value();
    std::printf("| %s OT plug-in (full model + tuned adapter) | %.2f |\n", name.c_str(),
                Figure(Evaluate(*plugged, user, 64), language));
    std::fflush(stdout);
  }
  if (args.fcmae_owner) {
    std::printf("\nowner's model pretrained by FCMAE on %lld unlabelled images",
                static_cast<long long>(owner.train_input.size(0)));
  } else {
    std::printf("\nowner's own task after pretraining: %s %.2f",
                language ? "perplexity" : "accuracy %", Figure(*owner_eval, language));
  }
  std::printf("; %lld blocks; seed %llu; %.0f s\n", static_cast<long long>(full->num_blocks()),
              static_cast<unsigned long long>(args.seed), Now() - t0);
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) {
  offsite::Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--task") args.task = value;
    else if (flag == "--seed") args.seed = std::strtoull(value.c_str(), nullptr, 10);
    else if (flag == "--threads") args.threads = std::atoi(value.c_str());
    else if (flag == "--pretrain-steps") args.pretrain_steps = std::atoll(value.c_str());
    else if (flag == "--distill-steps") args.distill_steps = std::atoll(value.c_str());
    else if (flag == "--tune-steps") args.tune_steps = std::atoll(value.c_str());
    else if (flag == "--layers") args.layers = std::atoll(value.c_str());
    else if (flag == "--user-train-subset") args.user_train_subset = std::atoll(value.c_str());
    else if (flag == "--owner-cache") args.owner_cache = value;
    else if (flag == "--owner-pretrain") {
      if (value != "supervised" && value != "fcmae") {
        std::fprintf(stderr, "--owner-pretrain: \"%s\" is not supervised or fcmae\n",
                     value.c_str());
        return 2;
      }
      args.fcmae_owner = value == "fcmae";
    }
    else if (flag == "--shift-invert") {
      if (value != "0" && value != "1") {
        std::fprintf(stderr, "--shift-invert: \"%s\" is not 0 or 1\n", value.c_str());
        return 2;
      }
      args.shift_invert = value == "1";
    }
    else if (flag == "--convnext") {
      std::vector<std::string> parts = absl::StrSplit(value, ':');
      auto ints = [](const std::string& list, std::vector<int64_t>* out) {
        out->clear();
        for (absl::string_view item : absl::StrSplit(list, ',')) {
          int64_t v = 0;
          if (!absl::SimpleAtoi(item, &v) || v < 1) return false;
          out->push_back(v);
        }
        return true;
      };
      offsite::ConvNextShape shape;
      std::vector<int64_t> stem;
      if (parts.size() != 3 || !ints(parts[0], &shape.depths) || !ints(parts[1], &shape.dims) ||
          !ints(parts[2], &stem) || stem.size() != 1 || shape.depths.size() != shape.dims.size()) {
        std::fprintf(stderr, "--convnext: \"%s\" is not DEPTHS:DIMS:STEM (e.g. 12:128:4)\n",
                     value.c_str());
        return 2;
      }
      shape.stem_stride = stem[0];
      args.convnext = shape;
    }
    else if (flag == "--tune") {
      if (value != "all" && value != "lora" && value != "top-only") {
        std::fprintf(stderr, "--tune: \"%s\" is not all, lora or top-only\n", value.c_str());
        return 2;
      }
      args.adapter_tuning.lora = value == "lora";
      args.adapter_tuning.top_only = value == "top-only";
    }
    else if (flag == "--splits") {
      args.splits.clear();
      for (absl::string_view item : absl::StrSplit(value, ',')) {
        long long b = 0, k = 0, t = 0;
        if (std::sscanf(std::string(item).c_str(), "%lld-%lld-%lld", &b, &k, &t) != 3) {
          std::fprintf(stderr, "--splits: \"%s\" is not B-K-T\n", std::string(item).c_str());
          return 2;
        }
        args.splits.push_back({b, k, t});
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (args.task != "language" && args.task != "vision" && args.task != "vision-shift") {
    std::fprintf(stderr, "--task: \"%s\" is not language, vision or vision-shift\n",
                 args.task.c_str());
    return 2;
  }
  if (args.task != "language" && args.layers >= 0) {
    std::fprintf(stderr, "--layers applies to --task language only\n");
    return 2;
  }
  if (args.task == "language" && args.convnext.has_value()) {
    std::fprintf(stderr, "--convnext applies to the vision tasks only\n");
    return 2;
  }
  if (args.task != "vision-shift" && args.shift_invert.has_value()) {
    std::fprintf(stderr, "--shift-invert applies to --task vision-shift only\n");
    return 2;
  }
  if (args.task != "vision" && args.fcmae_owner) {
    std::fprintf(stderr, "--owner-pretrain fcmae applies to --task vision only\n");
    return 2;
  }
  if (args.fcmae_owner && args.user_train_subset == 0) {
    std::fprintf(stderr,
                 "--user-train-subset 0 gives the data owner every training image, which leaves "
                 "the FCMAE owner none of its own\n");
    return 2;
  }
  if (args.task != "vision" && args.user_train_subset >= 0) {
    std::fprintf(stderr, "--user-train-subset applies to --task vision only\n");
    return 2;
  }
  offsite::ConfigureThreads(args.threads);
  std::printf("%s\n", offsite::RuntimeSummary().c_str());
  return offsite::Run(args);
}
