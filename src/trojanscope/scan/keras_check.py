"""Keras model files: v3 ``.keras`` archives and legacy HDF5 ``.h5`` files.

Not read yet: both end inconclusive (fail closed) until their configuration is checked.
"""

from __future__ import annotations

import zipfile

from trojanscope.scan.findings import FileReport
from trojanscope.scan.limits import Limits


def check_keras_archive(archive: zipfile.ZipFile, report: FileReport, limits: Limits) -> None:
    """The model configuration of a Keras v3 archive."""
    report.incomplete = "the Keras model configuration is not checked"


def check_hdf5(data: bytes | memoryview, report: FileReport, limits: Limits) -> None:
    """An HDF5 file (legacy Keras ``.h5``)."""
    report.incomplete = "unsupported format (HDF5)"
