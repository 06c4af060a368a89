"""Architectures (a registry), built in the project: no torchvision."""
