"""Importing trojanscope turns on MKL's conditional numerical reproducibility before MKL's first
call, so a fixed torch thread count trains the same weights from run to run."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.subprocesses import subprocess_env

#: MKL's code-branch query (mkl_cbwr.h): MKL_CBWR_BRANCH asks, MKL_CBWR_BRANCH_OFF answers
#: that the mode is off, MKL_CBWR_COMPATIBLE is one fixed branch. With AUTO, what the query
#: answers may be the branch chosen for this CPU, so the tests ask only that it is not off.
BRANCH, OFF, COMPATIBLE = 1, 1, 3

# What a fresh process reports: trojanscope imported (or not) first, then a product computed.
PROBE = """
import ctypes, os, sys
if sys.argv[1] == "package":
    import trojanscope
import torch
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
torch.ones(64, 64) @ torch.ones(64, 64)
print(lib.mkl_serv_cbwr_get(1))
"""


def _mkl() -> ctypes.CDLL:
    """torch's CPU library, if it carries MKL (x86-64 Linux wheels); else the test is moot."""
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not path.exists():
        pytest.skip("no libtorch_cpu.so: not a Linux build of torch")
    lib = ctypes.CDLL(str(path))
    if not hasattr(lib, "mkl_serv_cbwr_get"):
        pytest.skip("this torch does not use MKL")
    return lib


def _branch(first: str, **env: str) -> int:
    """The branch a fresh process reports, with no MKL_CBWR but ``env``'s (this process's own
    comes from importing trojanscope)."""
    clean = {k: v for k, v in subprocess_env().items() if k != "MKL_CBWR"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, first],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def test_mkl_is_reproducible_in_a_process_that_imports_trojanscope():
    _mkl()
    assert _branch("torch") == OFF  # the probe can tell: MKL's own default is off
    assert _branch("package") != OFF


def test_a_users_own_mkl_cbwr_wins():
    _mkl()
    assert _branch("package", MKL_CBWR="COMPATIBLE") == COMPATIBLE


def test_the_suite_itself_runs_with_it():
    """The in-process reference builds of tests/workflows are made here."""
    assert _mkl().mkl_serv_cbwr_get(BRANCH) != OFF
