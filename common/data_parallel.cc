#include "common/data_parallel.h"

#include <torch/torch.h>

#include <exception>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

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
}

absl::Status DataParallel::AllReduceGradients() { return AllReduceGradients(parameters_); }

absl::Status DataParallel::AllReduceGradients(const std::vector<at::Tensor>& parameters) {
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
