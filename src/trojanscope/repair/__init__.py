"""Repairs built on a localization: neuron pruning, neuron fine-tuning, and their evaluation."""
