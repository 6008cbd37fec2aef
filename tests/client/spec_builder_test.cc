#include "client/spec_builder.h"

#include <fstream>

#include "client/cli_args.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

TEST(SpecBuilderTest, SetsScalarsRepeatedAndBoolsByName) {
  absl::StatusOr<v1::JobSpec> spec = BuildJobSpec(
      "forward_forward", "",
      {"epochs=7", "learning_rate=0.01", "layer_widths=300, 200,100", "hard_negatives=true",
       "train_images=/data/x.gz", "seed=18446744073709551615"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  const v1::ForwardForwardSpec& ff = spec->forward_forward();
  EXPECT_EQ(ff.epochs(), 7);
  EXPECT_DOUBLE_EQ(ff.learning_rate(), 0.01);
  EXPECT_EQ(ff.layer_widths_size(), 3);
  EXPECT_EQ(ff.layer_widths(1), 200);
  EXPECT_TRUE(ff.hard_negatives());
  EXPECT_EQ(ff.train_images(), "/data/x.gz");
  EXPECT_EQ(ff.seed(), 18446744073709551615ull);
}

TEST(SpecBuilderTest, KindAcceptsDashes) {
  EXPECT_TRUE(BuildJobSpec("forward-forward", "", {})->has_forward_forward());
}

TEST(SpecBuilderTest, UnknownKindListsTheKinds) {
  absl::Status status = BuildJobSpec("nope", "", {}).status();
  EXPECT_NE(status.message().find("forward_forward"), std::string::npos);
}

TEST(SpecBuilderTest, UnknownFieldIsNamedWithTheValidOnes) {
  absl::Status status = BuildJobSpec("forward_forward", "", {"epoch=3"}).status();
  ASSERT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("\"epoch\""), std::string::npos);
  EXPECT_NE(status.message().find("epochs"), std::string::npos);
  EXPECT_NE(status.message().find("layer_widths"), std::string::npos);
}

TEST(SpecBuilderTest, BadValuesNameFieldAndExpectedType) {
  EXPECT_NE(BuildJobSpec("forward_forward", "", {"epochs=many"}).status().message().find("epochs"),
            std::string::npos);
  absl::Status overflow = BuildJobSpec("forward_forward", "", {"epochs=99999999999"}).status();
  EXPECT_NE(overflow.message().find("2147483647"), std::string::npos);
  EXPECT_FALSE(BuildJobSpec("forward_forward", "", {"hard_negatives=maybe"}).ok());
  EXPECT_FALSE(BuildJobSpec("forward_forward", "", {"learning_rate=nan"}).ok());
  EXPECT_FALSE(BuildJobSpec("forward_forward", "", {"noequals"}).ok());
}

TEST(SpecBuilderTest, SpecFileIsReadAndSetOverridesIt) {
  std::string path = ::testing::TempDir() + "ff_spec.textproto";
  std::ofstream(path) << "epochs: 3\nlayer_widths: [10, 20]\nseed: 4\n";
  absl::StatusOr<v1::JobSpec> spec = BuildJobSpec("forward_forward", path, {"epochs=9"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->forward_forward().epochs(), 9);
  EXPECT_EQ(spec->forward_forward().seed(), 4u);
  EXPECT_EQ(spec->forward_forward().layer_widths_size(), 2);

  std::ofstream(path) << "epochs: \"x\"\n";
  absl::Status bad = BuildJobSpec("forward_forward", path, {}).status();
  EXPECT_NE(bad.message().find(path), std::string::npos);
  EXPECT_NE(bad.message().find("line 1"), std::string::npos);
}

TEST(SpecBuilderTest, ResourcesAreSetBesideTheKindsSpec) {
  absl::StatusOr<v1::JobSpec> spec =
      BuildJobSpec("finetune", "", {"epochs=2", "resources.workers=2", "resources.threads=4"});
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->finetune().epochs(), 2);
  EXPECT_EQ(spec->resources().workers(), 2);
  EXPECT_EQ(spec->resources().threads(), 4);
  absl::Status bad = BuildJobSpec("finetune", "", {"resources.gpus=1"}).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("resources."), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("gpus"), std::string::npos) << bad.message();
}

TEST(CliArgsTest, ParsesPositionalsFlagsSwitchesAndRepeats) {
  CliArgs args = CliArgs::Parse({"submit", "ff", "--set", "a=1", "--set=b=2", "--watch", "--json",
                                 "--server", "h:1"},
                                {"watch", "json"})
                     .value();
  EXPECT_EQ(args.positional(), (std::vector<std::string>{"submit", "ff"}));
  EXPECT_EQ(args.GetAll("set"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_TRUE(args.Has("watch"));
  EXPECT_EQ(args.Get("server"), "h:1");
  EXPECT_FALSE(CliArgs::Parse({"--server"}, {}).ok());
  absl::Status unknown = args.CheckFlags({"set", "watch", "json"});
  EXPECT_EQ(ExitCodeFor(unknown), kExitUsage);
  EXPECT_NE(unknown.message().find("--server"), std::string::npos);
}

TEST(CliArgsTest, ExitCodesSeparateFailureKinds) {
  EXPECT_EQ(ExitCodeFor(absl::OkStatus()), kExitOk);
  EXPECT_EQ(ExitCodeFor(absl::NotFoundError("x")), kExitNotFound);
  EXPECT_EQ(ExitCodeFor(absl::PermissionDeniedError("x")), kExitDenied);
  EXPECT_EQ(ExitCodeFor(absl::UnauthenticatedError("x")), kExitDenied);
  EXPECT_EQ(ExitCodeFor(absl::UnavailableError("x")), kExitUnavailable);
  EXPECT_EQ(ExitCodeFor(absl::InvalidArgumentError("x")), kExitRejected);
  EXPECT_EQ(ExitCodeFor(UsageError("x")), kExitUsage);
  EXPECT_EQ(ExitCodeFor(absl::InternalError("x")), kExitError);
}

}  // namespace
}  // namespace offsite
