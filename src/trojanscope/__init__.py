"""trojanscope: neuron-level backdoor defects, their localization and repair, and artifact audit."""

__version__ = "0.1.0"
