#include "server/jobs/forward_forward_job.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/file_util.h"
#include "common/idx.h"
#include "common/proto_util.h"
#include "common/status_macros.h"
#include "google/protobuf/text_format.h"
#include "models/forward_forward.h"
#include "models/lr_schedule.h"
#include "server/jobs/training_loop.h"

namespace offsite {
namespace {

constexpr char kCheckpointFormat[] = "forward_forward_checkpoint";
constexpr char kModelFormat[] = "forward_forward_model";
constexpr int64_t kFormatVersion = 1;
constexpr int64_t kEvalBatch = 1000;

// The spec with every default filled in, so the job runs what it reports.
v1::ForwardForwardSpec Resolved(v1::ForwardForwardSpec spec) {
  if (spec.layer_widths().empty()) {
    for (int i = 0; i < 4; ++i) spec.add_layer_widths(500);
  }
  if (spec.learning_rate() == 0) spec.set_learning_rate(1e-3);
  if (spec.epochs() == 0) spec.set_epochs(10);
  if (spec.batch_size() == 0) spec.set_batch_size(100);
  if (spec.hard_negative_temperature() == 0) spec.set_hard_negative_temperature(1);
  if (spec.train_images().empty())
    spec.set_train_images(FashionMnistFile("train-images-idx3-ubyte.gz"));
  if (spec.train_labels().empty())
    spec.set_train_labels(FashionMnistFile("train-labels-idx1-ubyte.gz"));
  if (spec.test_images().empty())
    spec.set_test_images(FashionMnistFile("t10k-images-idx3-ubyte.gz"));
  if (spec.test_labels().empty())
    spec.set_test_labels(FashionMnistFile("t10k-labels-idx1-ubyte.gz"));
  return spec;
}

absl::Status CheckFile(const std::string& field, const std::string& path) {
  if (path.empty() || FileExists(path)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("forward_forward.", field, ": \"", path, "\" does not exist on the server"));
}

// Predictions in batches, so goodness mode's one pass per label stays small.
template <typename Predict>
double EvaluateAccuracy(const torch::Tensor& x, const torch::Tensor& y, Predict predict) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t start = 0; start < x.size(0); start += kEvalBatch) {
    int64_t end = std::min(start + kEvalBatch, x.size(0));
    torch::Tensor predicted = predict(x.slice(0, start, end));
    correct += predicted.eq(y.slice(0, start, end)).sum().item<int64_t>();
  }
  return x.size(0) ? static_cast<double>(correct) / x.size(0) : 0.0;
}

}  // namespace

absl::Status ForwardForwardJob::Validate(const v1::JobSpec& job_spec) const {
  const v1::ForwardForwardSpec& spec = job_spec.forward_forward();
  if (spec.layer_widths_size() == 1 || spec.layer_widths_size() > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward_forward.layer_widths: ", spec.layer_widths_size(),
                     " layers; goodness prediction needs 2 to 16 (or none for 4 x 500)"));
  }
  for (int i = 0; i < spec.layer_widths_size(); ++i) {
    OFFSITE_RETURN_IF_ERROR(CheckRange(absl::StrCat("forward_forward.layer_widths[", i, "]"),
                                       spec.layer_widths(i), 1, 16384));
  }
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.theta", spec.theta(), 0, 1e7));
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.learning_rate", spec.learning_rate(), 0, 1));
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.epochs", spec.epochs(), 0, 10000));
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.batch_size", spec.batch_size(), 0, 65536));
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.train_subset", spec.train_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.test_subset", spec.test_subset(), 0, 1e9));
  OFFSITE_RETURN_IF_ERROR(CheckRange("forward_forward.hard_negative_temperature",
                                     spec.hard_negative_temperature(), 0, 1e6));
  if (!std::isfinite(spec.theta()) || !std::isfinite(spec.learning_rate())) {
    return absl::InvalidArgumentError("forward_forward: theta and learning_rate must be finite");
  }
  OFFSITE_RETURN_IF_ERROR(CheckFile("train_images", spec.train_images()));
  OFFSITE_RETURN_IF_ERROR(CheckFile("train_labels", spec.train_labels()));
  OFFSITE_RETURN_IF_ERROR(CheckFile("test_images", spec.test_images()));
  OFFSITE_RETURN_IF_ERROR(CheckFile("test_labels", spec.test_labels()));
  return absl::OkStatus();
}

absl::Status ForwardForwardJob::Run(const v1::JobSpec& job_spec, JobContext& ctx) const {
  const v1::ForwardForwardSpec spec = Resolved(job_spec.forward_forward());
  const torch::Device device(ctx.device());

  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages train,
      LoadIdxDataset(spec.train_images(), spec.train_labels(), spec.train_subset()));
  OFFSITE_ASSIGN_OR_RETURN(
      LabeledImages test,
      LoadIdxDataset(spec.test_images(), spec.test_labels(), spec.test_subset()));
  const int64_t n = train.images.size(0);
  if (n == 0) return absl::InvalidArgumentError("forward_forward: the training set is empty");
  torch::Tensor train_x = train.images.reshape({n, -1}).to(device);
  torch::Tensor train_y = train.labels.to(device);
  torch::Tensor test_x = test.images.reshape({test.images.size(0), -1}).to(device);
  torch::Tensor test_y = test.labels.to(device);
  if (test_x.size(1) != train_x.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat("forward_forward: test images have ",
                                                   test_x.size(1), " pixels, training images ",
                                                   train_x.size(1)));
  }

  ForwardForwardOptions options;
  options.layer_widths.assign(spec.layer_widths().begin(), spec.layer_widths().end());
  options.input_dim = train_x.size(1);
  options.num_classes = std::max<int64_t>(
      10, std::max(train_y.max().item<int64_t>(), test_y.max().item<int64_t>()) + 1);
  if (options.input_dim <= options.num_classes) {
    return absl::InvalidArgumentError(absl::StrCat("forward_forward: ", options.input_dim,
                                                   " pixels cannot carry ", options.num_classes,
                                                   " label inputs"));
  }
  options.theta = spec.theta();
  options.learning_rate = spec.learning_rate();
  options.hard_negatives = spec.hard_negatives();
  options.hard_negative_temperature = spec.hard_negative_temperature();

  torch::manual_seed(spec.seed());
  ForwardForwardTrainer ff(options, device);
  std::unique_ptr<BackpropMlpTrainer> bp;
  if (spec.backprop_baseline()) bp = std::make_unique<BackpropMlpTrainer>(options, device);

  const int64_t batch = spec.batch_size();
  const int64_t steps_per_epoch = (n + batch - 1) / batch;
  ctx.Log(absl::StrCat("training ", n, " examples, ", test_x.size(0), " test, ",
                       options.layer_widths.size(), " layers, ", steps_per_epoch,
                       " steps per epoch on ", ctx.device()));

  double loss_sum = 0, softmax_loss_sum = 0, bp_loss_sum = 0;
  int64_t steps = 0;
  TrainingLoopOptions loop;
  loop.num_examples = n;
  loop.batch_size = batch;
  loop.epochs = spec.epochs();
  loop.seed = spec.seed();
  loop.checkpoint_format = kCheckpointFormat;
  loop.device = device;
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<DataParallel> data_parallel, ConnectDataParallel(ctx));
  loop.data_parallel = data_parallel.get();
  loop.parameters = ff.parameters();
  ff.set_gradient_sync(GradientSyncOf(data_parallel.get()));
  if (bp) {
    for (const torch::Tensor& p : bp->parameters()) loop.parameters.push_back(p);
    bp->set_gradient_sync(GradientSyncOf(data_parallel.get()));
  }
  TrainingLoopHooks hooks;
  hooks.step = [&](const torch::Tensor& index, int64_t global_step) -> absl::Status {
    if (spec.lr_cooldown()) {
      const double lr =
          LinearCooldown(global_step / steps_per_epoch + 1, spec.epochs(), spec.learning_rate());
      ff.SetLearningRate(lr);
      if (bp) bp->SetLearningRate(lr);
    }
    torch::Tensor x = train_x.index_select(0, index);
    torch::Tensor y = train_y.index_select(0, index);
    OFFSITE_ASSIGN_OR_RETURN(StepStats stats, ff.TrainStep(x, y));
    loss_sum += stats.loss;
    softmax_loss_sum += stats.softmax_loss;
    if (bp) {
      OFFSITE_ASSIGN_OR_RETURN(double bp_loss, bp->TrainStep(x, y));
      bp_loss_sum += bp_loss;
    }
    ++steps;
    return absl::OkStatus();
  };
  hooks.end_epoch = [&](int64_t epoch) {
    std::map<std::string, double> metrics;
    metrics["epoch"] = epoch;
    metrics["loss"] = steps ? loss_sum / steps : 0;
    metrics["softmax_loss"] = steps ? softmax_loss_sum / steps : 0;
    metrics["test_accuracy"] = EvaluateAccuracy(
        test_x, test_y, [&](const torch::Tensor& x) { return ff.PredictGoodness(x); });
    metrics["test_accuracy_softmax"] = EvaluateAccuracy(
        test_x, test_y, [&](const torch::Tensor& x) { return ff.PredictSoftmax(x); });
    if (bp) {
      metrics["backprop_loss"] = steps ? bp_loss_sum / steps : 0;
      metrics["backprop_test_accuracy"] =
          EvaluateAccuracy(test_x, test_y, [&](const torch::Tensor& x) { return bp->Predict(x); });
    }
    ctx.ReportMetrics(epoch * steps_per_epoch, metrics);
    ctx.Log(absl::StrCat("epoch ", epoch, ": loss ", metrics["loss"], ", test accuracy ",
                         metrics["test_accuracy"], " (goodness), ",
                         metrics["test_accuracy_softmax"], " (softmax)"));
    loss_sum = softmax_loss_sum = bp_loss_sum = 0;
    steps = 0;
    return absl::OkStatus();
  };
  hooks.save = [&](torch::serialize::OutputArchive& archive) {
    torch::serialize::OutputArchive ff_archive;
    ff.Save(ff_archive);
    archive.write("ff", ff_archive);
    if (bp) {
      torch::serialize::OutputArchive bp_archive;
      bp->Save(bp_archive);
      archive.write("bp", bp_archive);
    }
  };
  hooks.load = [&](torch::serialize::InputArchive& archive) {
    torch::serialize::InputArchive ff_archive;
    archive.read("ff", ff_archive);
    ff.Load(ff_archive);
    if (bp) {
      torch::serialize::InputArchive bp_archive;
      archive.read("bp", bp_archive);
      bp->Load(bp_archive);
    }
  };
  OFFSITE_RETURN_IF_ERROR(RunTrainingLoop(loop, hooks, ctx));

  // The trained model, with the spec that produced it.
  torch::serialize::OutputArchive model;
  model.write("spec", c10::IValue(TextProto(spec)));
  hooks.save(model);  // the same "ff" (and "bp") entries as a checkpoint
  const std::string model_path = ctx.work_dir() + "/model.pt";
  OFFSITE_RETURN_IF_ERROR(SaveArchive(model, kModelFormat, kFormatVersion, model_path));
  return ctx.AddArtifact(model_path, "forward_forward_model.pt").status();
}

}  // namespace offsite
