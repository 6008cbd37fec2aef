#ifndef OFFSITE_MODELS_FORWARD_FORWARD_H_
#define OFFSITE_MODELS_FORWARD_FORWARD_H_

// Supervised Forward-Forward training (Hinton 2022; see papers.md) of a ReLU
// MLP, and a backprop MLP of the same widths as its reference.
//
// Each layer reads the RMS-normalised activity of the layer below (the image,
// with the label one-hot written over its first num_classes pixels, for the
// first layer) and is trained on its own to give high goodness G = sum h^2 to
// positive data (the true label) and low goodness to negative data (a wrong
// label): loss = softplus(theta - G+) + softplus(G- - theta). No gradient
// crosses layers.
//
// Example:
//   ForwardForwardTrainer trainer(ForwardForwardOptions{}, torch::kCPU);
//   for (each batch x [B, 784] in [0, 1], y [B]) trainer.TrainStep(x, y);
//   double accuracy = Accuracy(trainer.PredictGoodness(test_x), test_y);
//
// Randomness (initialisation, negative labels) comes from torch's global
// generator: seed it with torch::manual_seed for reproducible runs.

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data_parallel.h"

namespace offsite {

struct ForwardForwardOptions {
  std::vector<int64_t> layer_widths{500, 500, 500, 500};
  int64_t input_dim = 784;
  int64_t num_classes = 10;
  double theta = 0;  // 0 means: number of units of each layer.
  double learning_rate = 1e-3;
  bool hard_negatives = false;
  // Draw hard negatives from the softmax read-out's probabilities (one pass
  // with the neutral label; near uniform while the read-out is untrained)
  // instead of from the goodness of every label (one pass per label).
  bool hard_negatives_from_softmax = false;
  // Hard negatives are drawn from softmax(scores / temperature) over the wrong
  // labels: below 1 the draw concentrates on the most likely wrong label,
  // above 1 it spreads toward uniform (infinity: uniform).
  double hard_negative_temperature = 1;
};

// OK, or InvalidArgumentError saying which option is out of range. The
// trainers' constructors throw c10::Error on options this rejects.
absl::Status ValidateForwardForwardOptions(const ForwardForwardOptions& options);

// x * sqrt(D) / ||x|| over the last dimension (so the root mean square of
// each row is 1); an all-zero row stays zero.
torch::Tensor RmsNormalize(const torch::Tensor& x);

// Goodness of each row of activities h [B, units]: sum of squares, [B].
torch::Tensor Goodness(const torch::Tensor& h);

// Mean over the batch of softplus(theta - G+) + softplus(G- - theta), i.e. the
// logistic loss of p(positive) = sigmoid(G - theta).
torch::Tensor ForwardForwardLoss(const torch::Tensor& positive_goodness,
                                 const torch::Tensor& negative_goodness, double theta);

// Copy of x [B, D] with labels [B] one-hot over its first num_classes columns.
torch::Tensor EmbedLabels(const torch::Tensor& x, const torch::Tensor& labels, int64_t num_classes);

// Copy of x [B, D] with 1 / num_classes in each of its first num_classes columns.
torch::Tensor EmbedNeutralLabel(const torch::Tensor& x, int64_t num_classes);

// For each true label, a wrong label drawn uniformly from the other
// num_classes - 1 classes. int64 [B], on the labels' device.
torch::Tensor SampleWrongLabels(const torch::Tensor& labels, int64_t num_classes);

// The distribution hard negatives are drawn from: softmax(scores[row] /
// temperature) over the classes other than labels[row], which gets 0.
// scores: [B, num_classes]; float [B, num_classes]. Infinity: uniform.
torch::Tensor HardNegativeProbabilities(const torch::Tensor& scores, const torch::Tensor& labels,
                                        double temperature = 1);

// For each row, a wrong label drawn from HardNegativeProbabilities. int64 [B].
torch::Tensor SampleHardWrongLabels(const torch::Tensor& scores, const torch::Tensor& labels,
                                    double temperature = 1);

// Fraction of predicted == labels, in [0, 1]; 0 for empty input.
double Accuracy(const torch::Tensor& predicted, const torch::Tensor& labels);

// The FF network: a stack of Linear + ReLU layers, each reading the detached,
// RMS-normalised activity of the layer below.
//
// Weights are initialised N(0, 1/out_features) and biases 0 (as in loeweX's
// port): with unit-RMS inputs a layer's initial goodness is about half its
// input width, the same order as theta (its own width).
class ForwardForwardNetImpl : public torch::nn::Module {
 public:
  ForwardForwardNetImpl(int64_t input_dim, const std::vector<int64_t>& widths);

  // Returns every layer's activity h_i = relu(W_i RmsNormalize(h_{i-1}) + b_i)
  // with h_0 = x. Each layer's input is detached, so a loss computed from h_i
  // has gradients for layer i's parameters only.
  std::vector<torch::Tensor> forward(const torch::Tensor& x);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  torch::nn::Linear& layer(int64_t i) { return layers_.at(i); }

 private:
  std::vector<torch::nn::Linear> layers_;
};
TORCH_MODULE(ForwardForwardNet);

struct StepStats {
  double loss = 0;          // FF loss, mean over layers.
  double softmax_loss = 0;  // Cross-entropy of the softmax head.
};

// Owns the FF net, one Adam per layer, and the softmax head with its own Adam.
class ForwardForwardTrainer {
 public:
  ForwardForwardTrainer(const ForwardForwardOptions& options, torch::Device device);

  // One optimisation step of every layer and of the softmax head.
  // x: float [B, input_dim], flattened pixels in [0, 1]; y: int64 [B].
  // Fails only when the gradient sync does.
  absl::StatusOr<StepStats> TrainStep(const torch::Tensor& x, const torch::Tensor& y);

  // Called between each backward pass and its optimiser steps (data-parallel
  // training); unset by default.
  void set_gradient_sync(GradientSync sync) { sync_ = std::move(sync); }
  // Every trained tensor: the layers' and the head's.
  std::vector<torch::Tensor> parameters() const;

  // Argmax over labels of LabelGoodness. int64 [B].
  torch::Tensor PredictGoodness(const torch::Tensor& x);

  // Argmax of the softmax head on the neutral-label activities. int64 [B].
  torch::Tensor PredictSoftmax(const torch::Tensor& x);

  // float [B, num_classes]: for each candidate label written into x, the
  // goodness summed over all layers but the first (over the one layer of a
  // one-layer net).
  torch::Tensor LabelGoodness(const torch::Tensor& x);

  // The FF loss of each layer for positives (x with labels y) and negatives
  // (x with negative_labels); x: float [B, input_dim], all on this trainer's
  // device. Loss i has gradients for layer i only; TrainStep minimises these.
  std::vector<torch::Tensor> LayerLosses(const torch::Tensor& x, const torch::Tensor& y,
                                         const torch::Tensor& negative_labels);

  // Sets the learning rate of every layer's optimiser and of the head's, e.g.
  // for a schedule; takes effect at the next TrainStep.
  void SetLearningRate(double learning_rate);

  // Writes / reads the net, the head and every optimiser's state, with a
  // format version and the layer widths. Load throws c10::Error if the archive
  // is not an FF checkpoint of the same widths. Load the archive onto this
  // trainer's device (InputArchive::load_from(path, device)).
  void Save(torch::serialize::OutputArchive& archive);
  void Load(torch::serialize::InputArchive& archive);

  ForwardForwardNet& net() { return net_; }
  const ForwardForwardOptions& options() const { return options_; }

 private:
  // Concatenated normalised activities of layers >= 2 for x with the neutral
  // label, detached: the softmax head's input.
  torch::Tensor HeadInput(const torch::Tensor& x);
  double Theta(int64_t layer) const;

  ForwardForwardOptions options_;
  torch::Device device_;
  ForwardForwardNet net_;
  std::vector<std::unique_ptr<torch::optim::Adam>> layer_optimizers_;
  torch::nn::Linear head_;
  std::unique_ptr<torch::optim::Adam> head_optimizer_;
  GradientSync sync_;
};

// Backprop reference: Linear + ReLU layers of options.layer_widths, a linear
// classifier on top, cross-entropy, one Adam. Reads raw pixels (no label in
// the input); uses input_dim, num_classes, layer_widths and learning_rate.
class BackpropMlpTrainer {
 public:
  BackpropMlpTrainer(const ForwardForwardOptions& options, torch::Device device);

  // One Adam step; returns the batch's cross-entropy. Fails only when the
  // gradient sync does.
  absl::StatusOr<double> TrainStep(const torch::Tensor& x, const torch::Tensor& y);
  // As ForwardForwardTrainer's.
  void set_gradient_sync(GradientSync sync) { sync_ = std::move(sync); }
  std::vector<torch::Tensor> parameters() const { return net_->parameters(); }
  torch::Tensor Predict(const torch::Tensor& x);  // int64 [B]
  void SetLearningRate(double learning_rate);

  // As ForwardForwardTrainer::Save / Load.
  void Save(torch::serialize::OutputArchive& archive);
  void Load(torch::serialize::InputArchive& archive);

 private:
  ForwardForwardOptions options_;
  torch::Device device_;
  torch::nn::Sequential net_;
  std::unique_ptr<torch::optim::Adam> optimizer_;
  GradientSync sync_;
};

}  // namespace offsite

#endif  // OFFSITE_MODELS_FORWARD_FORWARD_H_
