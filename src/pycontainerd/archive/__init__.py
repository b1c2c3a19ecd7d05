"""Layer apply and diff: executing :mod:`pycontainerd.sansio.tar` decisions on directories.

Both entry points block; callers run them with ``asyncio.to_thread``.

- :func:`apply_layer` unpacks a (possibly compressed) layer into a directory, with
  overlay-style or deleting whiteouts, without ever writing outside it.
- :func:`write_diff` writes the layer between two trees, or from an overlay upper
  dir, as a deterministic PAX tarball (gzip or uncompressed).
"""

from pycontainerd.archive.apply import ApplyResult, DiffIdMismatch, WhiteoutMode, apply_layer
from pycontainerd.archive.compression import (
    Compression,
    compression_for,
    detect_compression,
)
from pycontainerd.archive.diff import (
    ChangeKind,
    DiffCompression,
    DiffMode,
    DiffResult,
    double_walk_changes,
    overlay_changes,
    write_diff,
)
from pycontainerd.sansio.tar import LayerError, TruncatedLayer

__all__ = [
    "ApplyResult",
    "ChangeKind",
    "Compression",
    "DiffCompression",
    "DiffIdMismatch",
    "DiffMode",
    "DiffResult",
    "LayerError",
    "TruncatedLayer",
    "WhiteoutMode",
    "apply_layer",
    "compression_for",
    "detect_compression",
    "double_walk_changes",
    "overlay_changes",
    "write_diff",
]
