"""Bounded readers of the standard dataset files: LeCun's IDX (MNIST, Fashion-MNIST), plain or gzipped,
and CIFAR-10's pickled python batches.

A data folder is input from outside the project, so every reader here:
- opens only regular files, without blocking (a FIFO or a device in place of a file is refused at
  once instead of hanging the study);
- checks every declared size against the file's own size before allocating (an IDX header against
  the file's length, or for a gzipped file against its gzip trailer and deflate's largest ratio), and
  never decompresses beyond the declared size;
- constructs no object a file names: a CIFAR batch is unpickled with stand-ins for numpy's array and
  dtype reconstruction that accept only the exact uint8 dtype state and a byte buffer of exactly the
  declared shape (numpy's own ``dtype.__setstate__`` would take a tampered state, e.g. flags that make
  raw bytes be read as object pointers);
- refuses malformed contents (wrong type code, shape, count, dtype or label range) with one line
  naming the file (``TrialFailed``).

Written here because torchvision's readers do not check any of these, nor read gzipped IDX files.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import stat
from pathlib import Path
from typing import IO, Any

import numpy as np

from certstudy.errors import TrialFailed

MAX_FILE_BYTES = 1 << 30
"""The largest dataset file read (the MNIST training images are 47 MB, a CIFAR-10 batch 31 MB)."""
DEFLATE_MAX_RATIO = 1032
"""Deflate's largest expansion: a gzipped file can never hold more than this many bytes per byte."""
IDX_UNSIGNED_BYTE = 0x08


def open_regular(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[IO[bytes], int]:
    """(the open file, its size): refuses anything but a regular file of at most ``max_bytes``, opened
    non-blocking so that a FIFO cannot hang the caller."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise TrialFailed(f"{path}: cannot be opened ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise TrialFailed(f"{path}: not a regular file (a FIFO, device or socket is never read)")
    if info.st_size > max_bytes:
        os.close(fd)
        raise TrialFailed(f"{path}: {info.st_size} bytes, more than the {max_bytes} a dataset file may have")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), info.st_size


def _exactly(stream: IO[bytes], n: int, path: Path, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TrialFailed(f"{path}: ends inside its {what} ({len(data)} of {n} bytes)")
    return data


def read_idx(path: Path, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An unsigned-byte IDX array, gzipped (``.gz``) or not; ``item_shape`` (e.g. (28, 28)) is the
    shape every item must have (None: any)."""
    fh, size = open_regular(path)
    with fh:
        gz = path.suffix == ".gz"
        if gz:
            if size < 18:
                raise TrialFailed(f"{path}: too short for a gzip file")
            fh.seek(size - 4)
            trailer_size = int.from_bytes(fh.read(4), "little")  # uncompressed size mod 2^32
            fh.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
        try:
            head = _exactly(stream, 4, path, "header")
            if head[:2] != b"\x00\x00":
                raise TrialFailed(f"{path}: not an IDX file")
            if head[2] != IDX_UNSIGNED_BYTE:
                raise TrialFailed(f"{path}: IDX type code 0x{head[2]:02x}, expected unsigned bytes (0x08)")
            ndim = head[3]
            if not 1 <= ndim <= 4:
                raise TrialFailed(f"{path}: IDX with {ndim} dimensions")
            raw_dims = _exactly(stream, 4 * ndim, path, "header")
            dims = tuple(int.from_bytes(raw_dims[4 * k : 4 * k + 4], "big") for k in range(ndim))
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TrialFailed(f"{path}: unreadable ({exc})") from None
        if item_shape is not None and dims[1:] != tuple(item_shape):
            raise TrialFailed(f"{path}: items of shape {list(dims[1:])}, expected {list(item_shape)}")
        declared = math.prod(dims)
        total = 4 + 4 * ndim + declared
        if gz:
            if total % (1 << 32) != trailer_size or total > DEFLATE_MAX_RATIO * size:
                raise TrialFailed(f"{path}: its header says {list(dims)}, which the compressed file cannot hold")
        elif total != size:
            raise TrialFailed(f"{path}: its header says {list(dims)} ({total} bytes), the file has {size}")
        try:
            body = stream.read(declared + 1)  # never more than declared: one extra byte detects trailing data
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TrialFailed(f"{path}: unreadable ({exc})") from None
        if len(body) != declared:
            raise TrialFailed(f"{path}: holds {len(body)} values, its header says {list(dims)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def check_labels(path: Path, labels: np.ndarray, count: int, classes: int) -> None:
    """Refuses labels that do not match their images one to one or fall outside [0, classes)."""
    if labels.ndim != 1 or len(labels) != count:
        raise TrialFailed(f"{path}: {len(labels)} labels for {count} images")
    if len(labels) and int(labels.max()) >= classes:
        raise TrialFailed(f"{path}: label {int(labels.max())} outside 0..{classes - 1}")


# -- CIFAR-10's python batches ---------------------------------------------------------------------

_UINT8_STATE = (3, "|", None, None, None, -1, -1, 0)  # numpy's pickled state of dtype('u1')


class _DType:
    """Stands in for ``numpy.dtype`` in a batch: only unsigned bytes, with exactly numpy's state of it."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if name != "u1":
            raise pickle.UnpicklingError(f"dtype {name!r} (a CIFAR-10 batch holds unsigned bytes only)")

    def __setstate__(self, state: Any) -> None:
        if state != _UINT8_STATE:
            raise pickle.UnpicklingError(f"a tampered dtype state {state!r}")


class _Array:
    """Stands in for a reconstructed ``numpy.ndarray``: its state must be a C-ordered uint8 buffer of
    exactly its declared shape, which becomes a read-only view of those bytes."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("an array state that numpy does not write")
        version, shape, dtype, fortran, raw = state
        if version != 1 or not isinstance(dtype, _DType) or fortran is not False:
            raise pickle.UnpicklingError("an array that is not a C-ordered uint8 array")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape) and len(shape) <= 4):
            raise pickle.UnpicklingError(f"an array shape {shape!r}")
        data = raw.encode("latin1") if isinstance(raw, str) else raw
        if not isinstance(data, bytes) or len(data) != math.prod(shape):
            raise pickle.UnpicklingError(f"an array declaring shape {list(shape)} with {len(data)} bytes of data")
        self.value = np.frombuffer(data, dtype=np.uint8).reshape(shape)


_NDARRAY = object()


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than an ndarray")
    return _Array()


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode outside protocol 2's bytes")
    return codecs.encode(text, "latin1")


class CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR-10 batch uses, each to a checking stand-in (nothing of numpy's
    is constructed from the file); anything else is refused."""

    GLOBALS: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DType,
        ("_codecs", "encode"): _encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        found = self.GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return found


def read_cifar_batch(path: Path, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one CIFAR-10 python batch."""
    fh, _ = open_regular(path)
    with fh:
        try:
            batch = CifarUnpickler(fh, encoding="latin1").load()
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            OverflowError,
        ) as exc:
            raise TrialFailed(f"{path}: not a CIFAR-10 batch ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(batch, dict):
        raise TrialFailed(f"{path}: not a CIFAR-10 batch (no dict)")
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, _Array) or data.value is None or data.value.ndim != 2 or data.value.shape[1] != 3072:
        raise TrialFailed(f"{path}: its 'data' is not an (N, 3072) array of unsigned bytes")
    if not isinstance(labels, list) or not all(type(v) is int and v >= 0 for v in labels):
        raise TrialFailed(f"{path}: its 'labels' are not a list of non-negative integers")
    label_array = np.asarray(labels, dtype=np.int64)
    check_labels(path, label_array, len(data.value), classes)
    return data.value.reshape(-1, 3, 32, 32), label_array
