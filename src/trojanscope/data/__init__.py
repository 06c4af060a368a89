"""Data sets (a registry) and poisoned views."""
