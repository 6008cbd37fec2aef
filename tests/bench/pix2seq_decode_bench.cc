// Autoregressive decoding speed of the Pix2Seq detector: Greedy / Sample
// (models/pix2seq.h), which cache each position's keys and values and the
// memory's, against recomputing the whole prefix every step (what decoding did
// before the cache), on the same model, images and sequence length.
//
//   pix2seq_decode_bench [--threads N] [--canvas PX] [--boxes N] [--batch N]
//       [--samples K] [--repeats N]
//
// A fresh, untrained detector: its end token is one choice among ~60 at each
// box boundary, so some of the batch's sequences run to the longest length
// (--boxes boxes) and both decoders run every step on the whole batch (the
// step counts are printed). Prints sequences/s of each and the ratio.
// Defaults: the crowded-scene detector of docs/results/reward_tuning.md (48 px
// canvas, 10 boxes, 32 scenes x 8 samples: one reward-tuning step's sampling).

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "common/runtime.h"
#include "models/pix2seq.h"

namespace offsite {
namespace {

struct BenchOptions {
  int threads = 1;
  int64_t canvas = 48;
  int64_t boxes = 10;
  int64_t batch = 32;
  int64_t samples = 8;
  int repeats = 3;
};

double Seconds(const std::function<void()>& run, int repeats) {
  run();  // Warm-up.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) run();
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / repeats;
}

// The decoding loop without a cache: every step runs the decoder over the whole
// prefix and keeps the last position's sampled token.
torch::Tensor SampleRecomputingPrefix(Pix2SeqImpl& model, const torch::Tensor& images,
                                      int64_t copies, at::Generator generator) {
  torch::NoGradGuard no_grad;
  const torch::Tensor memory = model.Encode(images).repeat_interleave(copies, 0);
  torch::Tensor inputs = torch::full({memory.size(0), 1}, model.tokenizer().bos(), torch::kLong);
  for (int64_t step = 0; step < model.max_len(); ++step) {
    const torch::Tensor logits = model.Decode(memory, inputs).select(1, step);
    const torch::Tensor next = torch::multinomial(logits.softmax(-1), 1, false, generator);
    inputs = torch::cat({inputs, next}, 1);
  }
  return inputs;
}

int64_t ParsePositive(const char* flag, const char* value) {
  const long long parsed = value != nullptr ? std::atoll(value) : 0;
  if (parsed <= 0) {
    std::fprintf(stderr, "%s needs a positive integer\n", flag);
    std::exit(2);
  }
  return parsed;
}

int Main(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; i += 2) {
    const char* flag = argv[i];
    const int64_t value = ParsePositive(flag, i + 1 < argc ? argv[i + 1] : nullptr);
    if (std::strcmp(flag, "--threads") == 0) {
      options.threads = static_cast<int>(value);
    } else if (std::strcmp(flag, "--canvas") == 0) {
      options.canvas = value;
    } else if (std::strcmp(flag, "--boxes") == 0) {
      options.boxes = value;
    } else if (std::strcmp(flag, "--batch") == 0) {
      options.batch = value;
    } else if (std::strcmp(flag, "--samples") == 0) {
      options.samples = value;
    } else if (std::strcmp(flag, "--repeats") == 0) {
      options.repeats = static_cast<int>(value);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag);
      return 2;
    }
  }
  ConfigureThreads(options.threads);
  std::printf("%s\n", RuntimeSummary().c_str());

  // The experiment's detector: stem 2, stages of 32 and 64 channels, decoder
  // of 2 layers, width 64, 4 heads, one coordinate bin per pixel.
  Pix2SeqConfig config;
  config.image_size = options.canvas;
  config.encoder_depths = {1, 1};
  config.encoder_dims = {32, 64};
  config.encoder_stem_stride = 2;
  config.n_layer = 2;
  config.n_embd = 64;
  config.n_head = 4;
  config.tokenizer.num_bins = options.canvas;
  config.tokenizer.canvas_size = static_cast<float>(options.canvas);
  config.max_objects = options.boxes;
  config.constrain_grammar = true;
  torch::manual_seed(0);
  Pix2Seq model(config);
  model->eval();
  const torch::Tensor images = torch::rand({options.batch, 1, options.canvas, options.canvas});
  const int64_t sequences = options.batch * options.samples;
  std::printf(
      "detector: %lld px, %lld memory cells, decoder input up to %lld tokens; %lld x %lld"
      " sequences per call\n",
      static_cast<long long>(options.canvas),
      static_cast<long long>(model->grid_size() * model->grid_size()),
      static_cast<long long>(model->max_len()), static_cast<long long>(options.batch),
      static_cast<long long>(options.samples));

  int64_t cached_length = 0;
  const double cached = Seconds(
      [&] {
        const SampledSequences out =
            Sample(*model, images, options.samples, 1.0, at::detail::createCPUGenerator(1));
        cached_length = out.tokens.size(1);
      },
      options.repeats);
  const double recomputed = Seconds(
      [&] {
        SampleRecomputingPrefix(*model, images, options.samples, at::detail::createCPUGenerator(1));
      },
      options.repeats);
  std::printf("cached keys/values (Sample): %8.1f sequences/s  (%.2f s a call, %lld steps)\n",
              sequences / cached, cached, static_cast<long long>(cached_length));
  std::printf("whole prefix each step:      %8.1f sequences/s  (%.2f s a call, %lld steps)\n",
              sequences / recomputed, recomputed, static_cast<long long>(model->max_len()));
  std::printf("speed-up: x%.2f\n", recomputed / cached);
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) { return offsite::Main(argc, argv); }
