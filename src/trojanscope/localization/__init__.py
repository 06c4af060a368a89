"""Localization criteria (a registry; one module each) and the metrics that score them."""
