"""trojanscope: neuron-level backdoor defects, their localization and repair, and artifact audit."""

import os

__version__ = "0.1.0"

# Intel MKL, torch's CPU BLAS, may split a product among its threads differently from run to
# run, so a build with more than one torch thread could train other weights each time (seen on
# one CPU: one defect in six). Its conditional numerical reproducibility mode makes a fixed
# thread count give bit-identical results. MKL reads this once, at its first call: set on
# import, before any work (a user's own MKL_CBWR wins; spawned workers inherit it).
os.environ.setdefault("MKL_CBWR", "AUTO")
