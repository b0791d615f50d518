"""A batch of MLPs with a leading model dimension, their initializations and permutations.

Every weight tensor has shape (models, fan_in, fan_out) and every bias
(models, 1, fan_out), so one ``torch.baddbmm`` per layer runs all models at
once. Models never mix. The gradient of a sum of per-model losses with
respect to one model's weights is the gradient of that model's loss, and
Adam updates each element on its own. So training a batch equals training
each model alone, up to floating-point rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from study.auxlogits.data import NUM_CLASSES

# Independent random streams per seed, so one seed's draws never depend on which other seeds run.
STREAM_REFERENCE_INIT = 0
STREAM_FRESH_INIT = 1
STREAM_PERMUTATION = 2
STREAM_TEACHER_ORDER = 3
STREAM_NOISE = 4
STREAM_STUDENT_ORDER = 5


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """Return a CPU generator for one seed and stream, derived with numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


@dataclass
class BatchedMLP:
    """Weights of a batch of MLPs input -> hidden -> hidden -> 10 class + m auxiliary logits."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @property
    def num_models(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def layer_sizes(self) -> list[int]:
        return [int(self.weights[0].shape[1])] + [int(weight.shape[2]) for weight in self.weights]

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map inputs (models, batch, in) to logits (models, batch, 10 + m)."""
        hidden = inputs
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            hidden = torch.baddbmm(bias, hidden, weight)
            if index < last:
                hidden = torch.relu(hidden)
        return hidden

    __call__ = forward

    def select(self, indices: list[int] | torch.Tensor) -> "BatchedMLP":
        """Return copies of the chosen models, in the given order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return BatchedMLP(
            weights=[weight.detach()[index].clone() for weight in self.weights],
            biases=[bias.detach()[index].clone() for bias in self.biases],
        )

    def requires_grad_(self, flag: bool = True) -> "BatchedMLP":
        for tensor in self.parameters():
            tensor.requires_grad_(flag)
        return self

    @staticmethod
    def concatenate(batches: list["BatchedMLP"]) -> "BatchedMLP":
        layers = range(len(batches[0].weights))
        return BatchedMLP(
            weights=[torch.cat([batch.weights[i].detach() for batch in batches]) for i in layers],
            biases=[torch.cat([batch.biases[i].detach() for batch in batches]) for i in layers],
        )


def layer_sizes_for(input_size: int, hidden_size: int, aux_logits: int) -> list[int]:
    return [input_size, hidden_size, hidden_size, NUM_CLASSES + aux_logits]


def init_mlp(layer_sizes: list[int], generators: list[torch.Generator]) -> BatchedMLP:
    """Draw one MLP per generator with torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    weights, biases = [], []
    for fan_in, fan_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        layer_weights, layer_biases = [], []
        for generator in generators:
            layer_weights.append((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound)
            layer_biases.append((torch.rand(1, fan_out, generator=generator) * 2 - 1) * bound)
        weights.append(torch.stack(layer_weights))
        biases.append(torch.stack(layer_biases))
    return BatchedMLP(weights, biases)


def hidden_permutations(mlp: BatchedMLP, generators: list[torch.Generator]) -> list[list[torch.Tensor]]:
    """Draw one permutation per hidden layer and model: result[model][layer]."""
    hidden_sizes = mlp.layer_sizes[1:-1]
    return [[torch.randperm(size, generator=generator) for size in hidden_sizes] for generator in generators]


def permute_hidden_units(mlp: BatchedMLP, permutations: list[list[torch.Tensor]], consistent: bool) -> BatchedMLP:
    """Reorder the hidden units of each model.

    With ``consistent=True`` the next layer's inputs follow each reordered
    unit, which relabels the units and leaves the computed function
    unchanged. With ``consistent=False`` only each hidden layer's own outputs
    (weight columns and biases) are reordered, so every layer keeps exactly
    its weight values but feeds the next layer a shuffled feature order: a
    different function with identical weight statistics.
    """
    weights = [weight.detach().clone() for weight in mlp.weights]
    biases = [bias.detach().clone() for bias in mlp.biases]
    for model, model_permutations in enumerate(permutations):
        for layer, permutation in enumerate(model_permutations):
            weights[layer][model] = weights[layer][model][:, permutation]
            biases[layer][model] = biases[layer][model][:, permutation]
            if consistent:
                weights[layer + 1][model] = weights[layer + 1][model][permutation, :]
    return BatchedMLP(weights, biases)
