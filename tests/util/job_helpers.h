#ifndef OFFSITE_TESTS_UTIL_JOB_HELPERS_H_
#define OFFSITE_TESTS_UTIL_JOB_HELPERS_H_

// Small pieces for tests that drive the job API over gRPC: Forward-Forward
// specs on a Fashion-MNIST subset or on a synthetic IDX set, and polling a
// job until it reaches a state.
//
// Example:
//   auto jobs = v1::JobService::NewStub(channel);
//   absl::StatusOr<v1::Job> job = Submit(*jobs, FashionMnistFfSpec(2000, 1000, 2));
//   absl::StatusOr<v1::Job> done = WaitForJob(*jobs, job->id(), IsFinished,
//   std::chrono::seconds(60));

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "offsite/v1/job.grpc.pb.h"
#include "tests/util/idx_writer.h"

namespace offsite::testutil {

// Where Debian's dataset-fashion-mnist package puts its IDX files.
inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";
// True if the four Fashion-MNIST files are installed.
bool FashionMnistInstalled();

// A forward_forward job on the first `train_subset` / `test_subset` examples
// of Fashion-MNIST (the server's default data), with hidden `widths`.
v1::JobSpec FashionMnistFfSpec(int train_subset, int test_subset, int epochs,
                               const std::vector<int>& widths = {200, 200});
// A forward_forward job on a data set written by WriteSyntheticIdxDataSet.
v1::JobSpec SyntheticFfSpec(const IdxDataSet& data, int epochs);

// Jobs small enough for seconds on Fashion-MNIST: a detection_mle of a tiny
// detector on a few 32 px scenes (2 epochs, batch 16), its reward_tune
// (6 steps of 4 images x 4 samples), and a mic segmentation run (8 steps of
// batch 8 on 32 px canvases).
v1::JobSpec TinyDetectionMleSpec();
v1::JobSpec TinyRewardTuneSpec(const std::string& detector_artifact_id);
v1::JobSpec TinyMicSpec();

// An lm_pretrain job of a GPT decoder (32 wide, 2 heads, 32 positions) with
// `n_layer` blocks on the text file `path`: `steps` of batch 16, validated twice.
v1::JobSpec TinyLmPretrainSpec(const std::string& path, int n_layer, int steps);

bool IsFinished(const v1::Job& job);

absl::StatusOr<v1::Job> SubmitJob(v1::JobService::StubInterface& stub, const v1::JobSpec& spec);
absl::StatusOr<v1::Job> GetJob(v1::JobService::StubInterface& stub, const std::string& id);

// Polls GetJob until `done(job)` holds. DeadlineExceeded (with the job's last
// state) after `timeout`; an RPC error ends the wait at once.
absl::StatusOr<v1::Job> WaitForJob(v1::JobService::StubInterface& stub, const std::string& id,
                                   const std::function<bool(const v1::Job&)>& done,
                                   std::chrono::milliseconds timeout);

// Every event of a job so far, read with WatchJob from seq 0. For a finished
// job that is its whole history; for a running one, the stream is cut after
// `timeout`.
absl::StatusOr<std::vector<v1::JobEvent>> JobEvents(
    v1::JobService::StubInterface& stub, const std::string& id,
    std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace offsite::testutil

#endif  // OFFSITE_TESTS_UTIL_JOB_HELPERS_H_
