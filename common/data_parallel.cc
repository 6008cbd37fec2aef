#include "common/data_parallel.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <exception>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace offsite {
namespace {

using Clock = std::chrono::steady_clock;

std::string FirstLine(const std::exception& e) {
  std::string what = e.what();
  const size_t cut = what.find('\n');
  if (cut != std::string::npos) what.resize(cut);
  return what;
}

// Groups tensors, in order, into runs of one dtype of at most `bytes` bytes.
std::vector<std::vector<at::Tensor>> Buckets(const std::vector<at::Tensor>& tensors,
                                             int64_t bytes) {
  std::vector<std::vector<at::Tensor>> buckets;
  int64_t filled = 0;
  for (const at::Tensor& tensor : tensors) {
    const int64_t size = tensor.numel() * static_cast<int64_t>(tensor.element_size());
    if (buckets.empty() || buckets.back().front().scalar_type() != tensor.scalar_type() ||
        filled + size > bytes) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(tensor);
    filled += size;
  }
  return buckets;
}

at::Tensor Flatten(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (const at::Tensor& tensor : tensors) flat.push_back(tensor.reshape({-1}));
  return torch::cat(flat);
}

void Unflatten(const at::Tensor& flat, const std::vector<at::Tensor>& tensors) {
  int64_t offset = 0;
  for (const at::Tensor& tensor : tensors) {
    tensor.copy_(flat.slice(0, offset, offset + tensor.numel()).view_as(tensor));
    offset += tensor.numel();
  }
}

}  // namespace

struct DataParallel::Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> process_group;
};

// The trainable attached parameters in buckets, last layers first (backward
// reaches them first), and what one step has sent. Collectives must start in
// the same order on every rank: buckets leave strictly in index order, and
// every rank runs the same graph, so the hooks fire alike everywhere.
struct DataParallel::Overlap {
  std::vector<at::Tensor> params;
  std::unordered_map<const void*, size_t> position;  // TensorImpl -> index in params
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> bucket_of;
  // Each hook sits on the parameter's gradient accumulator, which the
  // parameter holds only weakly: keeping it here keeps the hook.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::vector<uintptr_t> hook_keys;

  bool enabled = true;  // off for good once a trainer syncs in parts
  bool armed = false;   // between BeginStep and the sync
  bool stale = false;   // a gradient changed after its bucket left: redo after backward
  std::vector<bool> ready;
  std::vector<size_t> missing;  // per bucket: parameters not yet ready
  size_t next_bucket = 0;
  std::vector<std::vector<at::Tensor>> flats;  // per sent bucket
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  absl::Status error;  // a send or wait that failed inside a hook or a drain

  ~Overlap() {
    for (size_t i = 0; i < accumulators.size(); ++i) accumulators[i]->del_post_hook(hook_keys[i]);
  }

  bool Covers(const std::vector<at::Tensor>& requested) const {
    std::vector<bool> seen(params.size(), false);
    size_t count = 0;
    for (const at::Tensor& p : requested) {
      if (!p.requires_grad()) continue;
      auto it = position.find(p.unsafeGetTensorImpl());
      if (it == position.end()) return false;
      if (!seen[it->second]) ++count;
      seen[it->second] = true;
    }
    return count == params.size();
  }
};

std::pair<int64_t, int64_t> RankShare(int64_t count, int rank, int world_size) {
  const int64_t base = count / world_size, extra = count % world_size;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

DataParallel::DataParallel(DataParallelOptions options, std::unique_ptr<Group> group)
    : options_(std::move(options)), group_(std::move(group)) {}

DataParallel::~DataParallel() = default;

absl::StatusOr<std::unique_ptr<DataParallel>> DataParallel::Connect(
    const DataParallelOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options.rank, " of world size ", options.world_size));
  }
  const size_t colon = options.store_address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(options.store_address.substr(colon + 1), &port) || port <= 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("rendezvous store address \"", options.store_address, "\" is not host:port"));
  }
  const std::string host = options.store_address.substr(0, colon);
  auto group = std::make_unique<Group>();
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = options.world_size;
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    auto tcp_store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
    group->store = c10::make_intrusive<c10d::PrefixStore>(options.prefix, tcp_store);
    auto pg_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
    // On loopback every rank binds there; otherwise to the address this
    // machine's host name resolves to.
    const bool loopback = host == "127.0.0.1" || host == "localhost";
    pg_options->devices.push_back(loopback
                                      ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                      : c10d::ProcessGroupGloo::createDefaultDevice());
    pg_options->threads = 2;
    group->process_group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        group->store, options.rank, options.world_size, pg_options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("data-parallel rendezvous at ",
                                               options.store_address, " as rank ", options.rank,
                                               " of ", options.world_size, ": ", FirstLine(e)));
  }
  return std::unique_ptr<DataParallel>(new DataParallel(options, std::move(group)));
}

void DataParallel::Attach(std::vector<at::Tensor> parameters, std::vector<at::Tensor> buffers) {
  parameters_ = std::move(parameters);
  buffers_ = std::move(buffers);
  overlap_.reset();
  if (!options_.overlap_with_backward) return;
  auto overlap = std::make_unique<Overlap>();
  for (const at::Tensor& p : parameters_) {
    if (!p.requires_grad() || !p.is_leaf() ||
        overlap->position.count(p.unsafeGetTensorImpl()) > 0) {
      continue;
    }
    overlap->position[p.unsafeGetTensorImpl()] = overlap->params.size();
    overlap->params.push_back(p);
  }
  const size_t n = overlap->params.size();
  if (n == 0) return;
  // Buckets in reverse order of the parameters, one dtype each.
  int64_t filled = 0, limit = options_.first_bucket_bytes;
  for (size_t k = n; k-- > 0;) {
    const at::Tensor& p = overlap->params[k];
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    if (overlap->buckets.empty() ||
        overlap->params[overlap->buckets.back().front()].scalar_type() != p.scalar_type() ||
        (filled > 0 && filled + size > limit)) {
      if (!overlap->buckets.empty()) limit = options_.bucket_bytes;
      overlap->buckets.emplace_back();
      filled = 0;
    }
    overlap->buckets.back().push_back(k);
    filled += size;
  }
  overlap->bucket_of.resize(n);
  for (size_t b = 0; b < overlap->buckets.size(); ++b) {
    for (size_t k : overlap->buckets[b]) overlap->bucket_of[k] = b;
  }
  Overlap* o = overlap.get();
  for (size_t k = 0; k < n; ++k) {
    std::shared_ptr<torch::autograd::Node> accumulator =
        torch::autograd::impl::grad_accumulator(o->params[k]);
    // Runs after the gradient has been accumulated into params[k].grad().
    o->hook_keys.push_back(
        accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
            [this, o, k](const torch::autograd::variable_list& outputs,
                         const torch::autograd::variable_list&) {
              if (!o->enabled || !o->armed) return outputs;
              if (o->ready[k]) {  // a second gradient this step
                if (o->bucket_of[k] < o->next_bucket) o->stale = true;
                return outputs;
              }
              o->ready[k] = true;
              if (--o->missing[o->bucket_of[k]] == 0) {
                while (o->next_bucket < o->buckets.size() && o->missing[o->next_bucket] == 0) {
                  SendBucket(o->next_bucket++, /*during_backward=*/true);
                }
              }
              return outputs;
            })));
    o->accumulators.push_back(std::move(accumulator));
  }
  overlap_ = std::move(overlap);
}

void DataParallel::SendBucket(size_t b, bool during_backward) {
  Overlap& o = *overlap_;
  if (!o.error.ok()) return;
  try {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> grads;
    for (size_t k : o.buckets[b]) {
      const at::Tensor& p = o.params[k];
      grads.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
    }
    o.flats[b] = {Flatten(grads).mul_(step_weight_)};
    stats_.allreduce_bytes += o.flats[b][0].numel() * o.flats[b][0].element_size();
    o.works[b] = group_->process_group->allreduce(o.flats[b]);
    ++(during_backward ? stats_.buckets_sent_during_backward : stats_.buckets_sent_after_backward);
  } catch (const std::exception& e) {
    o.error = absl::UnavailableError(absl::StrCat("gradient all-reduce: ", FirstLine(e)));
  }
}

void DataParallel::Drain() {
  Overlap& o = *overlap_;
  for (auto& work : o.works) {
    if (!work) continue;
    try {
      work->wait();
    } catch (const std::exception& e) {
      if (o.error.ok()) {
        o.error = absl::UnavailableError(absl::StrCat("gradient all-reduce: ", FirstLine(e)));
      }
    }
    work.reset();
  }
  o.armed = false;
}

absl::Status DataParallel::BroadcastFromRankZero() {
  try {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> all = parameters_;
    for (const at::Tensor& buffer : buffers_) {
      if (buffer.defined() && buffer.numel() > 0) all.push_back(buffer);
    }
    for (const std::vector<at::Tensor>& bucket : Buckets(all, options_.bucket_bytes)) {
      std::vector<at::Tensor> flat = {Flatten(bucket)};
      c10d::BroadcastOptions broadcast;
      broadcast.rootRank = 0;
      group_->process_group->broadcast(flat, broadcast)->wait();
      Unflatten(flat[0], bucket);
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("broadcast of the initial weights: ", FirstLine(e)));
  }
  return absl::OkStatus();
}

void DataParallel::BeginStep(int64_t local, int64_t global) {
  step_weight_ = global > 0 ? static_cast<double>(local) / static_cast<double>(global) : 0.0;
  if (overlap_ == nullptr) return;
  Overlap& o = *overlap_;
  Drain();  // a step that never synced leaves nothing in flight
  const size_t n = o.params.size(), nb = o.buckets.size();
  o.ready.assign(n, false);
  o.missing.assign(nb, 0);
  for (size_t b = 0; b < nb; ++b) o.missing[b] = o.buckets[b].size();
  o.flats.assign(nb, {});
  o.works.assign(nb, c10::intrusive_ptr<c10d::Work>());
  o.next_bucket = 0;
  o.stale = false;
  o.armed = o.enabled;
}

absl::Status DataParallel::AllReduceGradients() { return AllReduceGradients(parameters_); }

absl::Status DataParallel::AllReduceGradients(const std::vector<at::Tensor>& parameters) {
  const Clock::time_point start = Clock::now();
  if (overlap_ != nullptr) {
    Overlap& o = *overlap_;
    const bool whole = o.Covers(parameters);
    if (o.armed && whole && !o.stale) {
      while (o.next_bucket < o.buckets.size()) SendBucket(o.next_bucket++, false);
      Drain();
      if (!o.error.ok()) return std::exchange(o.error, absl::OkStatus());
      torch::NoGradGuard no_grad;
      for (size_t b = 0; b < o.buckets.size(); ++b) {
        std::vector<at::Tensor> grads;
        for (size_t k : o.buckets[b]) {
          at::Tensor& p = o.params[k];
          if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
          grads.push_back(p.grad());
        }
        Unflatten(o.flats[b][0], grads);
      }
      ++stats_.allreduce_calls;
      stats_.allreduce_seconds += std::chrono::duration<double>(Clock::now() - start).count();
      return absl::OkStatus();
    }
    // Syncing in parts cannot use what backward sent (a bucket may hold
    // parameters of a later part): from now on every call reduces its part
    // after backward, on every rank alike.
    if (!whole) o.enabled = false;
    Drain();
    if (!o.error.ok()) return std::exchange(o.error, absl::OkStatus());
  }
  return AllReduceAfterBackward(parameters);
}

absl::Status DataParallel::AllReduceAfterBackward(const std::vector<at::Tensor>& parameters) {
  const Clock::time_point start = Clock::now();
  try {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> grads;
    grads.reserve(parameters.size());
    for (at::Tensor parameter : parameters) {
      if (!parameter.requires_grad()) continue;
      if (!parameter.grad().defined()) parameter.mutable_grad() = torch::zeros_like(parameter);
      grads.push_back(parameter.grad());
    }
    std::vector<std::vector<at::Tensor>> buckets = Buckets(grads, options_.bucket_bytes);
    std::vector<std::vector<at::Tensor>> flats;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    flats.reserve(buckets.size());
    // Every bucket is in flight before the first wait, so packing one
    // overlaps with sending another.
    for (const std::vector<at::Tensor>& bucket : buckets) {
      flats.push_back({Flatten(bucket).mul_(step_weight_)});
      stats_.allreduce_bytes += flats.back()[0].numel() * flats.back()[0].element_size();
      works.push_back(group_->process_group->allreduce(flats.back()));
    }
    for (size_t i = 0; i < buckets.size(); ++i) {
      works[i]->wait();
      Unflatten(flats[i][0], buckets[i]);
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gradient all-reduce: ", FirstLine(e)));
  }
  ++stats_.allreduce_calls;
  stats_.allreduce_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> DataParallel::AllReduceSum(std::vector<double> values) {
  if (values.empty()) return values;
  try {
    std::vector<at::Tensor> tensor = {
        torch::tensor(values, torch::TensorOptions().dtype(torch::kFloat64))};
    group_->process_group->allreduce(tensor)->wait();
    for (size_t i = 0; i < values.size(); ++i) {
      values[i] = tensor[0][static_cast<int64_t>(i)].item<double>();
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("all-reduce: ", FirstLine(e)));
  }
  return values;
}

GradientSync GradientSyncOf(DataParallel* data_parallel) {
  if (data_parallel == nullptr) return nullptr;
  return [data_parallel](const std::vector<at::Tensor>& parameters) {
    return data_parallel->AllReduceGradients(parameters);
  };
}

absl::Status SyncGradients(const GradientSync& sync, const std::vector<at::Tensor>& parameters) {
  return sync ? sync(parameters) : absl::OkStatus();
}

}  // namespace offsite
