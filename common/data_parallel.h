#ifndef OFFSITE_COMMON_DATA_PARALLEL_H_
#define OFFSITE_COMMON_DATA_PARALLEL_H_

// Data-parallel training on PyTorch's own distributed engine: the ranks of a
// job meet at a c10d TCPStore (hosted by rank 0), form a Gloo process group,
// start from rank 0's weights, and sum their gradients every step, each
// weighted by its share of the global batch, so every rank takes the step one
// process would take on the whole batch.
//
// The sum runs in buckets overlapped with backward, as PyTorch's DDP does:
// a hook on each parameter's gradient accumulator marks it ready, and a
// bucket (last layers first) is all-reduced as soon as all its gradients are
// in, while backward goes on with the earlier layers. AllReduceGradients then
// sends what is left and waits. A trainer that syncs its parameters in parts
// (one optimiser after another) turns the overlap off for the run and each
// call reduces its part after backward.
//
// Any model trains this way through its parameter list; nothing is specific
// to a job kind. server/jobs/training_loop.h wires it into the shared loop.
//
// Example (each rank):
//   DataParallelOptions options{rank, world_size, "10.0.0.7:29500", "job-1/1"};
//   absl::StatusOr<std::unique_ptr<DataParallel>> dp = DataParallel::Connect(options);
//   (*dp)->Attach(model->parameters(), model->buffers());
//   OFFSITE_RETURN_IF_ERROR((*dp)->BroadcastFromRankZero());
//   for (...) {
//     (*dp)->BeginStep(local_batch_size, global_batch_size);  // before backward
//     loss.backward();
//     OFFSITE_RETURN_IF_ERROR((*dp)->AllReduceGradients());
//     optimizer.step();
//   }

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace offsite {

struct DataParallelOptions {
  int rank = 0;
  int world_size = 1;
  // host:port of rank 0's TCPStore; rank 0 listens on that port.
  std::string store_address;
  // Keys of this group in the store, e.g. "<job id>/<attempt>".
  std::string prefix;
  // How long to wait for the other ranks (rendezvous and each collective).
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  // Gradients travel in flat buckets of at most this many bytes; the first
  // (the last layers') is smaller, so communication starts early.
  int64_t bucket_bytes = int64_t{25} << 20;
  int64_t first_bucket_bytes = int64_t{1} << 20;
  // Send buckets while backward runs (off: every bucket after backward).
  bool overlap_with_backward = true;
};

// Time spent in collectives, for benchmarks and logs.
struct DataParallelStats {
  int64_t allreduce_calls = 0;
  // Time inside AllReduceGradients: what backward did not hide.
  double allreduce_seconds = 0;
  int64_t allreduce_bytes = 0;
  int64_t buckets_sent_during_backward = 0;
  int64_t buckets_sent_after_backward = 0;
};

class DataParallel {
 public:
  // Rendezvous with the other ranks. Unavailable when they do not all arrive
  // within options.timeout; InvalidArgument for a bad rank or address.
  static absl::StatusOr<std::unique_ptr<DataParallel>> Connect(const DataParallelOptions& options);
  ~DataParallel();

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }

  // The tensors kept identical on every rank: parameters (whose gradients are
  // reduced) and buffers (e.g. running statistics, only broadcast). Installs
  // the gradient hooks (removed again by the next Attach or the destructor).
  void Attach(std::vector<at::Tensor> parameters, std::vector<at::Tensor> buffers = {});
  // Copies rank 0's parameters and buffers to every rank.
  absl::Status BroadcastFromRankZero();
  // Before the step's backward: this rank holds `local` of the step's
  // `global` examples; its gradient counts with weight local / global (equal
  // shares: a plain average). Arms the hooks for the step.
  void BeginStep(int64_t local, int64_t global);
  // After backward: sums the weighted gradients of the attached parameters
  // over the ranks (the buckets backward has not sent yet, then waits for
  // all). A parameter without a gradient counts as zero.
  absl::Status AllReduceGradients();
  // The same for `parameters` alone: a part of the attached ones (a trainer
  // that steps its optimisers one after another reduces each one's part
  // before its step), or all of them in any order.
  absl::Status AllReduceGradients(const std::vector<at::Tensor>& parameters);
  // Sums `values` element-wise over the ranks (metrics, counts).
  absl::StatusOr<std::vector<double>> AllReduceSum(std::vector<double> values);

  const DataParallelStats& stats() const { return stats_; }

 private:
  struct Group;
  struct Overlap;
  DataParallel(DataParallelOptions options, std::unique_ptr<Group> group);
  // Reduces `parameters` after backward, in buckets launched together.
  absl::Status AllReduceAfterBackward(const std::vector<at::Tensor>& parameters);
  // Starts the all-reduce of overlap bucket `b` of this step's gradients.
  void SendBucket(size_t b, bool during_backward);
  // Waits for every bucket in flight; disarms the step's hooks.
  void Drain();

  DataParallelOptions options_;
  std::unique_ptr<Group> group_;
  std::unique_ptr<Overlap> overlap_;
  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> buffers_;
  double step_weight_ = 1.0;
  DataParallelStats stats_;
};

// What a trainer calls between backward and an optimiser step: makes the
// gradients of `parameters` those of the step's whole global batch, the same
// on every rank. Empty for one process. Trainers take one and call it through
// SyncGradients, so they know nothing of ranks or networks.
using GradientSync = std::function<absl::Status(const std::vector<at::Tensor>& parameters)>;

// DataParallel::AllReduceGradients as a GradientSync; empty for nullptr.
GradientSync GradientSyncOf(DataParallel* data_parallel);

// Calls `sync` on `parameters` when it is set; OK at once otherwise.
absl::Status SyncGradients(const GradientSync& sync, const std::vector<at::Tensor>& parameters);

// The [begin, end) share of rank `rank` among `world_size` ranks of `count`
// examples: contiguous, sizes differing by at most one.
std::pair<int64_t, int64_t> RankShare(int64_t count, int rank, int world_size);

}  // namespace offsite

#endif  // OFFSITE_COMMON_DATA_PARALLEL_H_
