"""Repair methods, one module each (auto-registered)."""
