"""Backdoor attacks (a registry): triggers, target mappings and poisoned views."""
