"""Lifecycle stages: transfer, compression and deployment applied to a defect (``base``)."""
