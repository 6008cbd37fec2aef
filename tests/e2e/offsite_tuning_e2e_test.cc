// Offsite-Tuning's two-party round trip over real mTLS: the owner pretrains a
// small decoder, registers it, builds an emulator package and grants it; a
// data owner pulls, tunes offline, and pushes the adapter; the server plugs it
// in and reports. Also the refusals: no grant, tampered adapters, other
// tenants.

#include <chrono>
#include <iostream>
#include <memory>
#include <string>

#include "client/transfer.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/offsite_tuning.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "offsite/v1/job.grpc.pb.h"
#include "offsite/v1/offsite_tuning.grpc.pb.h"
#include "tests/util/bpe_files.h"
#include "tests/util/hf_checkpoint.h"
#include "tests/util/job_helpers.h"
#include "tests/util/server_process.h"

namespace offsite {
namespace {

using std::chrono::seconds;
using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::IsFinished;
using testutil::RunClient;
using testutil::ServerOptions;
using testutil::ServerProcess;
using testutil::TempDir;

// Plain English, repeated with variations, so a tiny model learns something in
// a few steps; the owner's and the data owner's texts differ.
std::string Corpus(const std::string& subject, int documents) {
  std::string text;
  for (int i = 0; i < documents; ++i) {
    text += "The " + subject + " number " + std::to_string(i % 17) +
            " is kept in a quiet room, and every morning it is counted again.\n%\n";
  }
  return text;
}

class OffsiteTuningE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.data_dir = tmp_.File("data");
    auto server = ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    ASSERT_TRUE(server_->IssueIdentity("alice", "data-owner").ok());
    ASSERT_TRUE(server_->IssueIdentity("bob", "data-owner").ok());
    jobs_ = v1::JobService::NewStub(server_->Channel("owner"));
    offsite_ = v1::OffsiteService::NewStub(server_->Channel("owner"));
    ASSERT_TRUE(WriteFileAtomic(tmp_.File("public.txt"), Corpus("lamp", 400)).ok());
    ASSERT_TRUE(WriteFileAtomic(tmp_.File("alice.txt"), Corpus("violin", 300)).ok());
  }

  std::vector<std::string> As(const std::string& identity, std::vector<std::string> args) {
    for (const std::string& flag : {std::string("--server"), server_->address(),
                                    std::string("--certs-dir"), server_->certs_dir(),
                                    std::string("--identity"), identity}) {
      args.push_back(flag);
    }
    return args;
  }

  v1::Job RunJob(const v1::JobSpec& spec) {
    auto submitted = testutil::SubmitJob(*jobs_, spec);
    EXPECT_TRUE(submitted.ok()) << submitted.status();
    if (!submitted.ok()) return {};
    auto done = testutil::WaitForJob(*jobs_, submitted->id(), IsFinished, seconds(300));
    EXPECT_TRUE(done.ok()) << done.status();
    return done.ok() ? *done : v1::Job();
  }

  // Pretrain, register and package a 6-block decoder, split 1-2-1.
  std::string BuildPackage() {
    v1::Job pretrained = RunJob(testutil::TinyLmPretrainSpec(tmp_.File("public.txt"), 6, 40));
    EXPECT_EQ(pretrained.state(), v1::SUCCEEDED) << pretrained.error();
    EXPECT_EQ(pretrained.artifact_ids_size(), 1);
    if (pretrained.artifact_ids_size() != 1) return "";

    grpc::ClientContext add_context;
    v1::AddModelRequest add;
    add.set_name("tiny-gpt");
    add.set_artifact_id(pretrained.artifact_ids(0));
    v1::Model model;
    grpc::Status added = offsite_->AddModel(&add_context, add, &model);
    EXPECT_TRUE(added.ok()) << added.error_message();
    EXPECT_EQ(model.num_blocks(), 6);

    v1::JobSpec build;
    v1::EmulatorSpec* emulator = build.mutable_emulator();
    emulator->set_model("tiny-gpt");
    emulator->set_bottom(1);
    emulator->set_top(1);
    emulator->set_emulator_blocks(2);
    emulator->mutable_distill()->set_steps(10);
    emulator->mutable_distill()->set_batch_size(8);
    emulator->mutable_distill()->mutable_data()->mutable_text()->set_path(tmp_.File("public.txt"));
    emulator->mutable_task_eval()->mutable_text()->set_path(tmp_.File("alice.txt"));
    v1::Job built = RunJob(build);
    EXPECT_EQ(built.state(), v1::SUCCEEDED) << built.error();
    EXPECT_GT(built.metrics().at("emulator_zero_shot_perplexity"), 1.0);
    EXPECT_GT(built.metrics().at("full_zero_shot_perplexity"), 1.0);

    grpc::ClientContext list_context;
    v1::ListPackagesResponse packages;
    EXPECT_TRUE(offsite_->ListPackages(&list_context, {}, &packages).ok());
    EXPECT_EQ(packages.packages_size(), 1);
    if (packages.packages_size() != 1) return "";
    const v1::Package& package = packages.packages(0);
    EXPECT_EQ(package.job_id(), built.id());
    // 1-2-1 of 6: blocks 0 and 5 are the adapter, 1 and 4 the emulator.
    EXPECT_THAT(package.manifest().adapter_blocks(), ::testing::ElementsAre(0, 5));
    EXPECT_THAT(package.manifest().emulator_blocks(), ::testing::ElementsAre(1, 4));
    return package.id();
  }

  TempDir tmp_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::OffsiteService::Stub> offsite_;
};

TEST_F(OffsiteTuningE2eTest, PullTunePushPlugInRoundTrip) {
  const std::string package_id = BuildPackage();
  ASSERT_FALSE(package_id.empty());
  const std::string dir = tmp_.File("alice-package");

  // No grant yet: the package is not Alice's to pull.
  CommandResult denied = RunClient(As("alice", {"offsite", "pull", package_id, "-o", dir}));
  EXPECT_EQ(denied.exit_code, 6) << denied.err;
  EXPECT_THAT(denied.err, HasSubstr("not granted"));

  CommandResult grant = RunClient(As("owner", {"packages", "grant", package_id, "alice"}));
  ASSERT_EQ(grant.exit_code, 0) << grant.err;
  CommandResult pull = RunClient(As("alice", {"offsite", "pull", package_id, "-o", dir}));
  ASSERT_EQ(pull.exit_code, 0) << pull.err;
  ASSERT_TRUE(FileExists(dir + "/package.safetensors"));

  // Tuning is offline: run it in a network namespace with no interface but
  // loopback (nothing listens there), where any connection attempt fails.
  const std::vector<std::string> tune_args = {
      testutil::ClientBinary(), "offsite", "tune", dir, "--data", tmp_.File("alice.txt"),
      "--steps", "20", "--batch-size", "8"};
  std::vector<std::string> isolated = {"/usr/bin/unshare", "--net", "--"};
  isolated.insert(isolated.end(), tune_args.begin(), tune_args.end());
  CommandResult tune = testutil::RunCommand(isolated);
  if (tune.exit_code == 127 || tune.err.rfind("unshare:", 0) == 0) {
    // No unshare, or no permission for namespaces here: run it plainly.
    std::cerr << "tune runs without network isolation: " << tune.err << "\n";
    tune = testutil::RunCommand(tune_args);
  }
  ASSERT_EQ(tune.exit_code, 0) << tune.err;
  ASSERT_TRUE(FileExists(dir + "/adapter.safetensors"));

  CommandResult push = RunClient(As("alice", {"offsite", "push", dir, "--watch"}),
                                 std::chrono::seconds(300));
  ASSERT_EQ(push.exit_code, 0) << push.err << push.out;
  EXPECT_THAT(push.out + push.err, HasSubstr("plugin_perplexity"));

  auto alice = v1::OffsiteService::NewStub(server_->Channel("alice"));
  grpc::ClientContext list_context;
  v1::ListAdaptersResponse adapters;
  ASSERT_TRUE(alice->ListAdapters(&list_context, {}, &adapters).ok());
  ASSERT_EQ(adapters.adapters_size(), 1);
  auto alice_jobs = v1::JobService::NewStub(server_->Channel("alice"));
  auto report = testutil::WaitForJob(*alice_jobs, adapters.adapters(0).job_id(), IsFinished,
                                     seconds(120));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->state(), v1::SUCCEEDED) << report->error();
  EXPECT_GT(report->metrics().at("plugin_perplexity"), 1.0);
  EXPECT_GT(report->metrics().at("ot_emulator_perplexity"), 1.0);

  // Bob sees neither Alice's package file, nor her adapters, nor her report.
  auto bob = v1::OffsiteService::NewStub(server_->Channel("bob"));
  grpc::ClientContext bob_context;
  v1::GetPackageRequest get;
  get.set_id(package_id);
  v1::Package package;
  EXPECT_EQ(bob->GetPackage(&bob_context, get, &package).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext bob_list;
  v1::ListAdaptersResponse bob_adapters;
  ASSERT_TRUE(bob->ListAdapters(&bob_list, {}, &bob_adapters).ok());
  EXPECT_EQ(bob_adapters.adapters_size(), 0);
  auto bob_artifacts = v1::ArtifactService::NewStub(server_->Channel("bob"));
  grpc::ClientContext owner_get;
  v1::Package owner_view;
  ASSERT_TRUE(offsite_->GetPackage(&owner_get, get, &owner_view).ok());
  auto stolen = DownloadArtifact(*bob_artifacts, owner_view.artifact_id(), tmp_.File("stolen"));
  EXPECT_EQ(stolen.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(OffsiteTuningE2eTest, ImportedGpt2ReadsTextWithItsOwnTokenizerEndToEnd) {
  // A Hugging Face GPT-2 checkpoint with its BPE files, as a model owner
  // brings one: imported, packaged, tuned and plugged in like any model.
  const std::string hf = tmp_.File("hf-gpt2");
  ASSERT_TRUE(MakeDirs(hf).ok());
  testutil::Gpt2Sizes sizes;
  sizes.vocab = 260;
  sizes.positions = 32;
  sizes.width = 16;
  sizes.layers = 4;
  ASSERT_TRUE(testutil::WriteGpt2CheckpointDir(hf, sizes, 3).ok());
  ASSERT_TRUE(WriteFileAtomic(hf + "/vocab.json", testutil::ByteLevelVocabJson(
                                                      {"he", "Ġt", "Ġthe", "<|endoftext|>"}))
                  .ok());
  ASSERT_TRUE(WriteFileAtomic(hf + "/merges.txt", "#version: 0.2\nh e\nĠ t\nĠt he\n").ok());
  CommandResult imported = RunClient(
      As("owner", {"models", "import", "--family", "gpt2", hf, "--name", "hf-gpt2"}));
  ASSERT_EQ(imported.exit_code, 0) << imported.err;

  v1::JobSpec build;
  v1::EmulatorSpec* emulator = build.mutable_emulator();
  emulator->set_model("hf-gpt2");
  emulator->set_bottom(1);
  emulator->set_top(1);
  emulator->set_emulator_blocks(1);
  emulator->mutable_distill()->set_steps(4);
  emulator->mutable_distill()->set_batch_size(4);
  emulator->mutable_distill()->mutable_data()->mutable_text()->set_path(tmp_.File("public.txt"));
  emulator->mutable_task_eval()->mutable_text()->set_path(tmp_.File("alice.txt"));
  const v1::Job built = RunJob(build);
  ASSERT_EQ(built.state(), v1::SUCCEEDED) << built.error();

  grpc::ClientContext list_context;
  v1::ListPackagesResponse packages;
  ASSERT_TRUE(offsite_->ListPackages(&list_context, {}, &packages).ok());
  ASSERT_EQ(packages.packages_size(), 1);
  const std::string package_id = packages.packages(0).id();
  ASSERT_EQ(RunClient(As("owner", {"packages", "grant", package_id, "alice"})).exit_code, 0);
  const std::string dir = tmp_.File("alice-hf-package");
  ASSERT_EQ(RunClient(As("alice", {"offsite", "pull", package_id, "-o", dir})).exit_code, 0);
  // The package brought the tokenizer: Alice's text is read as GPT-2 BPE.
  CommandResult tune = RunClient(
      {"offsite", "tune", dir, "--data", tmp_.File("alice.txt"), "--steps", "4", "--batch-size", "4"});
  ASSERT_EQ(tune.exit_code, 0) << tune.err;
  EXPECT_THAT(tune.err, HasSubstr("tokenizer: BPE (260 tokens)"));
  CommandResult push = RunClient(As("alice", {"offsite", "push", dir, "--watch"}),
                                 std::chrono::seconds(300));
  ASSERT_EQ(push.exit_code, 0) << push.err << push.out;
  EXPECT_THAT(push.out + push.err, HasSubstr("plugin_perplexity"));
}

TEST_F(OffsiteTuningE2eTest, TamperedAdaptersAreRefusedAndChangeNothing) {
  const std::string package_id = BuildPackage();
  ASSERT_FALSE(package_id.empty());
  ASSERT_EQ(RunClient(As("owner", {"packages", "grant", package_id, "alice"})).exit_code, 0);
  const std::string dir = tmp_.File("alice-package");
  ASSERT_EQ(RunClient(As("alice", {"offsite", "pull", package_id, "-o", dir})).exit_code, 0);
  ASSERT_EQ(RunClient({"offsite", "tune", dir, "--data", tmp_.File("alice.txt"), "--steps", "2"})
                .exit_code,
            0);
  const SafetensorsFile good = ReadSafetensors(dir + "/adapter.safetensors").value();

  auto alice = v1::OffsiteService::NewStub(server_->Channel("alice"));
  auto alice_artifacts = v1::ArtifactService::NewStub(server_->Channel("alice"));
  auto push = [&](const SafetensorsFile& file, const std::string& name) {
    const std::string path = tmp_.File(name);
    EXPECT_TRUE(WriteSafetensors(path, file).ok());
    auto uploaded = UploadArtifact(*alice_artifacts, path, name);
    EXPECT_TRUE(uploaded.ok()) << uploaded.status();
    grpc::ClientContext context;
    v1::PushAdapterRequest request;
    request.set_package_id(package_id);
    request.set_artifact_id(uploaded.ok() ? uploaded->id() : "");
    v1::Adapter adapter;
    return alice->PushAdapter(&context, request, &adapter);
  };
  SafetensorsFile wrong_shape = good;
  wrong_shape.tensors[0].tensor = torch::zeros({2, 2});
  SafetensorsFile extra = good;
  extra.tensors.push_back({"h.1.ln_1.weight", torch::ones({32})});
  SafetensorsFile nan = good;
  nan.tensors[0].tensor = nan.tensors[0].tensor.clone();
  nan.tensors[0].tensor.view(-1)[0] = std::nan("");
  SafetensorsFile other = good;
  other.metadata[kMetaPackageId] = "pkg-0000000000000000";
  const std::vector<std::pair<SafetensorsFile, std::string>> cases = {
      {wrong_shape, "shape"}, {extra, "not part of the adapter"}, {nan, "NaN"},
      {other, "pkg-0000000000000000"}};
  int i = 0;
  for (const auto& [file, expected] : cases) {
    grpc::Status status = push(file, "bad" + std::to_string(i++) + ".safetensors");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << expected;
    EXPECT_THAT(status.error_message(), HasSubstr(expected));
  }
  // Nothing was recorded and no job was queued for the refused pushes.
  grpc::ClientContext list_context;
  v1::ListAdaptersResponse adapters;
  ASSERT_TRUE(alice->ListAdapters(&list_context, {}, &adapters).ok());
  EXPECT_EQ(adapters.adapters_size(), 0);
  auto alice_jobs = v1::JobService::NewStub(server_->Channel("alice"));
  grpc::ClientContext jobs_context;
  v1::ListJobsResponse alice_job_list;
  ASSERT_TRUE(alice_jobs->ListJobs(&jobs_context, {}, &alice_job_list).ok());
  EXPECT_EQ(alice_job_list.jobs_size(), 0);
  // The untouched adapter is accepted.
  EXPECT_TRUE(push(good, "good.safetensors").ok());
}

}  // namespace
}  // namespace offsite
