#include <torch/torch.h>

#include <map>
#include <string>

#include "gtest/gtest.h"
#include "models/lr_schedule.h"
#include "models/optimizer.h"
#include "server/jobs/convnext_jobs_common.h"
#include "server/jobs/fcmae_job.h"
#include "server/jobs/finetune_job.h"

namespace offsite {
namespace {

TEST(ConvNextJobsTest, DefaultArchIsTheSmallImageNetwork) {
  ConvNextV2Config config = ResolveArch(v1::ConvNextV2Arch(), 1, 10).value();
  EXPECT_EQ(config.depths, (std::vector<int64_t>{2, 2, 6}));
  EXPECT_EQ(config.dims, (std::vector<int64_t>{40, 80, 160}));
  EXPECT_EQ(config.stem_stride, 2);
  EXPECT_TRUE(config.use_grn);
  v1::ConvNextV2Arch atto;
  atto.set_size("atto");
  atto.set_no_grn(true);
  ConvNextV2Config named = ResolveArch(atto, 3, 1000).value();
  EXPECT_EQ(named.dims.back(), 320);
  EXPECT_FALSE(named.use_grn);
}

TEST(ConvNextJobsTest, BadSpecsAreRejectedNamingTheField) {
  auto fcmae_error = [](const std::function<void(v1::FcmaeSpec*)>& edit) {
    v1::JobSpec spec;
    edit(spec.mutable_fcmae());
    return std::string(FcmaeJob().Validate(spec).message());
  };
  EXPECT_EQ(fcmae_error([](v1::FcmaeSpec*) {}), "");
  EXPECT_NE(fcmae_error([](v1::FcmaeSpec* s) { s->set_mask_ratio(1.5); }).find("fcmae.mask_ratio"),
            std::string::npos);
  EXPECT_NE(fcmae_error([](v1::FcmaeSpec* s) { s->mutable_arch()->set_size("giant"); })
                .find("giant"),
            std::string::npos);
  EXPECT_NE(fcmae_error([](v1::FcmaeSpec* s) { s->mutable_arch()->add_dims(-3); }).find("dims"),
            std::string::npos);
  EXPECT_NE(fcmae_error([](v1::FcmaeSpec* s) { s->mutable_data()->set_train_images("/no/file"); })
                .find("fcmae.data.train_images"),
            std::string::npos);
  EXPECT_NE(fcmae_error([](v1::FcmaeSpec* s) {
              s->set_epochs(2);
              s->set_warmup_epochs(3);
            }).find("warmup_epochs"),
            std::string::npos);

  v1::JobSpec probe;
  probe.mutable_finetune()->set_linear_probe(true);
  EXPECT_NE(FinetuneJob().Validate(probe).message().find("pretrained_artifact"),
            std::string::npos);
  v1::JobSpec smoothing;
  smoothing.mutable_finetune()->set_label_smoothing(0.9);
  EXPECT_NE(FinetuneJob().Validate(smoothing).message().find("finetune.label_smoothing"),
            std::string::npos);
  v1::JobSpec layer_decay;
  layer_decay.mutable_finetune()->set_layer_decay(1.5);
  EXPECT_NE(FinetuneJob().Validate(layer_decay).message().find("finetune.layer_decay"),
            std::string::npos);
}

TEST(ConvNextJobsTest, FineTuningAdamWNeverDecaysGrnNormsOrBiases) {
  ConvNextV2Config config = ResolveArch(v1::ConvNextV2Arch(), 1, 10).value();
  ConvNextV2 model = MakeConvNextV2(config).value();
  auto optimizer = MakeAdamW(*model, 1e-3, 0.05, 0.999, /*exclude_grn=*/true);
  ASSERT_EQ(optimizer->param_groups().size(), 2u);
  const auto& decayed = optimizer->param_groups()[0];
  EXPECT_DOUBLE_EQ(
      static_cast<const torch::optim::AdamWOptions&>(decayed.options()).weight_decay(), 0.05);
  std::set<const void*> decayed_ptrs;
  for (const torch::Tensor& p : decayed.params()) decayed_ptrs.insert(p.data_ptr());
  int grn = 0;
  for (const auto& item : model->named_parameters()) {
    const bool no_decay = item.key().find("grn.") != std::string::npos || item.value().dim() <= 1;
    EXPECT_EQ(decayed_ptrs.count(item.value().data_ptr()), no_decay ? 0u : 1u) << item.key();
    grn += item.key().find("grn.") != std::string::npos;
  }
  EXPECT_GT(grn, 0);
}

TEST(ConvNextJobsTest, LayerDecayGivesEachParameterItsBlocksRateThroughTheSchedule) {
  ConvNextV2Config config = ResolveArch(v1::ConvNextV2Arch(), 1, 10).value();  // 10 blocks
  ConvNextV2 model = MakeConvNextV2(config).value();
  auto scale = [&config](const std::string& name) { return LayerDecayScale(config, name, 0.5); };
  auto optimizer = MakeAdamW(*model, 1e-3, 0.05, 0.999, /*exclude_grn=*/true, scale);
  const std::vector<double> scales = LrScales(*optimizer);
  SetLearningRate(*optimizer, 4e-3, scales);  // a scheduled step keeps the decay

  std::map<const void*, double> lr_of;
  for (const auto& group : optimizer->param_groups()) {
    for (const torch::Tensor& p : group.params()) lr_of[p.data_ptr()] = group.options().get_lr();
  }
  std::map<std::string, double> expected = {
      {"downsample_layers.0.0.weight", 4e-3 / 1024},  // the stem: as block 0, 0.5^10
      {"blocks.0.dwconv.weight", 4e-3 / 1024},
      {"downsample_layers.1.1.weight", 4e-3 / 256},  // stage 1 starts at block 2
      {"blocks.9.pwconv2.weight", 4e-3 / 2},
      {"norm.weight", 4e-3},
      {"head.weight", 4e-3},
  };
  int trainable = 0;
  for (const auto& item : model->named_parameters()) {
    ASSERT_EQ(lr_of.count(item.value().data_ptr()), 1u) << item.key() << " is in no group";
    ++trainable;
    auto it = expected.find(item.key());
    if (it != expected.end()) {
      EXPECT_DOUBLE_EQ(lr_of[item.value().data_ptr()], it->second) << item.key();
      expected.erase(it);
    }
  }
  EXPECT_TRUE(expected.empty()) << expected.begin()->first << " is not a parameter name";
  EXPECT_EQ(lr_of.size(), static_cast<size_t>(trainable));
}

}  // namespace
}  // namespace offsite
