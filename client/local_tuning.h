#ifndef OFFSITE_CLIENT_LOCAL_TUNING_H_
#define OFFSITE_CLIENT_LOCAL_TUNING_H_

// The data owner's side of Offsite-Tuning, offline: tunes the adapter of a
// pulled package on local data against the frozen emulator, and leaves the
// adapter to push back. No network, no server: everything happens in DIR.
//
//   DIR/package.safetensors   read: the package (`offsite offsite pull`); every
//                             tensor is checked against its SHA-256 first
//   DIR/adapter.safetensors   written: the tuned ADAPTER tensors only (LoRA
//                             merged), what `offsite offsite push` uploads
//   DIR/tune_report.json      written: the figures below and the options used
//
// The data owner never holds the full model, so model selection uses what it
// has: the best state by validation loss of the emulator on a local split
// (images: the test files; text: held-out documents).
//
// Example:
//   LocalTuneOptions options;
//   options.package_dir = "pkg";
//   options.data.mutable_text()->set_path("notes.txt");
//   OFFSITE_ASSIGN_OR_RETURN(LocalTuneReport report, TuneLocally(options, nullptr));
//   // report.metrics["ot_emulator_perplexity"] < report.metrics["emulator_zero_shot_perplexity"]

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/offsite_tuning.h"
#include "offsite/v1/offsite_tuning.pb.h"

namespace offsite {

inline constexpr char kPackageFileName[] = "package.safetensors";
inline constexpr char kAdapterFileName[] = "adapter.safetensors";
inline constexpr char kManifestFileName[] = "manifest.textproto";
inline constexpr char kTuneReportFileName[] = "tune_report.json";

struct LocalTuneReport;

struct LocalTuneOptions {
  // Holds package.safetensors; adapter and report are written here.
  std::string package_dir;
  // The local data. Images (classification packages): train files to tune
  // on, test files to validate on, `classes` to pick and relabel the task's
  // classes (their count must equal the package head's). Text (language
  // modelling packages): a file or directory; validation_fraction of its
  // documents are held out.
  v1::TaskData data;

  // Optimiser steps; 0: `epochs` passes over the training data, i.e.
  // ceil(epochs * N / batch_size) with N the training examples, or for text
  // the training tokens / context (5 epochs, as the paper).
  int64_t steps = 0;
  double epochs = 5;
  int64_t batch_size = 32;
  // Peak AdamW learning rate; 0: 1e-4 for language models (the paper's
  // adapter learning rate) and 1e-3 for vision (a small ConvNeXt's adapter and
  // new head learn too slowly at 1e-4 in a few epochs).
  double learning_rate = 0;
  double weight_decay = 0;
  // Linear warm-up steps, then cosine; -1: steps / 10.
  int64_t warmup_steps = -1;
  double clip_norm = 1.0;
  // Validation every N steps (and at the end); 0: steps / 10 (at least 1).
  int64_t eval_interval = 0;
  uint64_t seed = 0;
  // What trains: full adapter, top adapter only, or LoRA on the adapter.
  TuneOptions tune;
  // LibTorch intra-op threads; 0 leaves the default.
  int threads = 0;
  std::string device = "cpu";

  // Called once before the first step, with the resolved plan (options,
  // data sizes, trainable parameters) and the emulator's zero-shot figures;
  // e.g. to size a progress bar.
  std::function<void(const LocalTuneReport&)> on_start;
};

struct LocalTuneReport {
  std::string package_id;
  std::string model;
  std::string task;  // "classification" or "language_modeling"
  // The split as "bottom-emulator-top" blocks, e.g. "1-1-1".
  std::string split;
  // Language models: how text was tokenized, the package's own tokenizer
  // ("bytes", or "BPE (50257 tokens)" for an imported GPT-2).
  std::string tokenizer;

  // Resolved options.
  int64_t steps = 0;
  int64_t batch_size = 0;
  double learning_rate = 0;
  double weight_decay = 0;
  int64_t warmup_steps = 0;
  double clip_norm = 0;
  int64_t eval_interval = 0;
  uint64_t seed = 0;
  TuneOptions tune;
  std::string device;

  // Training examples (images) or tokens (text), and the same for validation.
  int64_t train_size = 0;
  int64_t validation_size = 0;
  int64_t trainable_parameters = 0;
  // Emulator with the untuned adapter, and with the tuned one (the best
  // step's, LoRA merged: exactly the adapter written).
  Evaluation emulator_zero_shot;
  Evaluation ot_emulator;
  int64_t best_step = 0;
  double seconds = 0;
  // emulator_zero_shot_{accuracy|perplexity,loss}, ot_emulator_{...}.
  std::map<std::string, double> metrics;

  std::string adapter_path;
  std::string report_path;
  // The emulator as tuned (best step, LoRA merged), for callers that look
  // further; on options.device.
  std::shared_ptr<BlockModelImpl> tuned_emulator;
};

// Tunes the package in options.package_dir on options.data; calls `on_step`
// (may be null) after every step (returning false stops with Cancelled).
// Errors: NotFound for a missing package file; InvalidArgument for a
// tampered package (naming the tensor), data that does not fit the package's
// task (images for a language model, a class count different from the head's)
// or bad options.
absl::StatusOr<LocalTuneReport> TuneLocally(const LocalTuneOptions& options,
                                            const StepCallback& on_step);

// The report as a JSON object, as written to tune_report.json.
std::string LocalTuneReportJson(const LocalTuneReport& report);

}  // namespace offsite

#endif  // OFFSITE_CLIENT_LOCAL_TUNING_H_
