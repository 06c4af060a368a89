"""Artifact scanners: recognise a model file by content and report what loading it would do,
without executing anything from it."""
