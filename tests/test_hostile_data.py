"""Hostile dataset files: crafted CIFAR-10 pickles (tampered dtype states, object dtypes, phantom shapes,
foreign globals), gzip bombs, FIFOs in place of files and malformed IDX files are refused with one line
naming the file, quickly and within bounded memory; nothing of numpy's is built from a file's say-so."""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from certstudy.data.data_files import read_cifar_batch, read_idx
from certstudy.errors import TrialFailed


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fails the test instead of hanging it (a reader blocked on a FIFO would never return)."""

    def _expired(*_: object) -> None:
        raise AssertionError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _Crafted:
    """Pickles as numpy's array reconstruction with any state a crafter likes."""

    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self) -> tuple:
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (0,), b"b"), self.state


def _batch(path: Path, data: object, labels: object) -> Path:
    path.write_bytes(pickle.dumps({"batch_label": "x", "data": data, "labels": labels}, protocol=2))
    return path


def test_a_genuine_batch_loads(tmp_path: Path) -> None:
    data = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    images, labels = read_cifar_batch(_batch(tmp_path / "b", data, [0, 9, 3, 3]))
    assert images.shape == (4, 3, 32, 32) and np.array_equal(images.reshape(4, -1), data)
    assert labels.tolist() == [0, 9, 3, 3] and labels.dtype == np.int64


@pytest.mark.parametrize(
    "case,data,labels,fragment",
    [
        ("float-pixels", np.zeros((2, 3072), dtype=np.float64), [0, 1], "dtype 'f8'"),
        ("int64-pixels", np.zeros((2, 3072), dtype=np.int64), [0, 1], "dtype 'i8'"),
        ("object-dtype-flags-0", _Crafted((1, (2, 3072), "O", False, b"\x00" * 16)), [0, 1], "uint8"),
        ("phantom-shape", _Crafted((1, (60000, 3072), np.dtype("u1"), False, b"\x00" * 60000)), [0] * 60000, "60000"),
        ("wrong-shape", np.zeros((2, 1000), dtype=np.uint8), [0, 1], "(N, 3072)"),
        ("fewer-labels", np.zeros((3, 3072), dtype=np.uint8), [0, 1], "2 labels for 3 images"),
        ("label-out-of-range", np.zeros((2, 3072), dtype=np.uint8), [0, 10], "label 10 outside"),
        ("float-labels", np.zeros((2, 3072), dtype=np.uint8), [0.0, 1.0], "labels"),
    ],
)
def test_malformed_batches_are_refused_in_one_line(
    tmp_path: Path, case: str, data: object, labels: object, fragment: str
) -> None:
    path = _batch(tmp_path / case, data, labels)
    with pytest.raises(TrialFailed) as info:
        read_cifar_batch(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message, message


def test_a_tampered_dtype_state_is_refused(tmp_path: Path) -> None:
    """numpy's dtype.__setstate__ takes a state whose flags make raw bytes be read as object pointers
    (a crash, one step from code execution); the stand-in takes nothing but uint8's exact state."""
    genuine = pickle.dumps({"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [1]}, protocol=2)
    state = b"K\x03X\x01\x00\x00\x00|q"
    assert state in genuine
    tampered = genuine.replace(state, b"K\x04X\x01\x00\x00\x00|q")
    path = tmp_path / "tampered"
    path.write_bytes(tampered)
    with pytest.raises(TrialFailed, match="tampered dtype state"):
        read_cifar_batch(path)


def test_a_foreign_global_is_never_called(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    path = _batch(tmp_path / "evil", Evil(), [0])
    with pytest.raises(TrialFailed, match="is not allowed"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_a_fifo_in_place_of_a_file_is_refused_at_once(tmp_path: Path) -> None:
    for name, read in (("data_batch_1", read_cifar_batch), ("train-images-idx3-ubyte", read_idx)):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        with _deadline(10), pytest.raises(TrialFailed, match="not a regular file"):
            read(fifo)


def _idx(dims: tuple[int, ...], body: bytes, code: int = 8) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + body


@pytest.mark.parametrize(
    "case,content,item_shape,fragment",
    [
        ("float-pixels", _idx((2, 28, 28), b"\x00" * (2 * 28 * 28 * 4), code=0x0D), (28, 28), "type code 0x0d"),
        ("wrong-item-shape", _idx((2, 27, 28), b"\x00" * (2 * 27 * 28)), (28, 28), "items of shape [27, 28]"),
        ("truncated", _idx((2, 28, 28), b"\x00" * 100), (28, 28), "header says"),
        ("trailing", _idx((1, 28, 28), b"\x00" * (2 * 28 * 28)), (28, 28), "header says"),
    ],
)
def test_malformed_idx_files_are_refused(
    tmp_path: Path, case: str, content: bytes, item_shape: tuple[int, ...], fragment: str
) -> None:
    for path in (tmp_path / case, tmp_path / f"{case}.gz"):
        path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
        with pytest.raises(TrialFailed) as info:
            read_idx(path, item_shape)
        assert str(path) in str(info.value) and "\n" not in str(info.value), str(info.value)
        if path.suffix != ".gz" or case != "trailing":
            assert fragment in str(info.value), str(info.value)


def test_mnist_labels_must_match_their_images(tmp_path: Path) -> None:
    from certstudy.data import DATASETS

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 3)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx((n, 28, 28), b"\x01" * (n * 784)))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx((n,), bytes(range(n))))
    ds = DATASETS.get("mnist")
    assert len(ds.load(ds.Params(root=str(tmp_path), val_size=1), 0, str(tmp_path)).y_test) == 3
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx((2,), bytes([0, 1])))
    with pytest.raises(TrialFailed, match="2 labels for 3 images"):
        ds.load(ds.Params(root=str(tmp_path), val_size=1), 0, str(tmp_path))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx((3,), bytes([0, 1, 12])))
    with pytest.raises(TrialFailed, match="label 12 outside 0..9"):
        ds.load(ds.Params(root=str(tmp_path), val_size=1), 0, str(tmp_path))


def _zeros_gzip(path: Path, header: bytes, zeros: int, forge_size: int | None = None) -> None:
    """header + ``zeros`` zero bytes, gzipped in a stream; ``forge_size`` rewrites the trailer's size."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        fh.write(comp.compress(header))
        chunk = b"\x00" * (1 << 20)
        for _ in range(zeros >> 20):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())
    if forge_size is not None:
        data = bytearray(path.read_bytes())
        data[-4:] = (forge_size % (1 << 32)).to_bytes(4, "little")
        path.write_bytes(bytes(data))


PEAK_RSS = """
import resource, sys
from pathlib import Path
from certstudy.data.data_files import read_idx
from certstudy.errors import TrialFailed
try:
    read_idx(Path(sys.argv[1]), (28, 28))
    print("read")
except TrialFailed as exc:
    print("refused:", exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.parametrize("forged", [False, True])
def test_a_gzip_bomb_is_refused_without_expanding_it(tmp_path: Path, forged: bool) -> None:
    """256 MiB of zeros behind a header declaring 60,000 images (47 MB): refused from the gzip trailer
    without decompressing, or (trailer forged to agree) after reading no more than the declared size."""
    header = _idx((60000, 28, 28), b"")
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    declared = len(header) + 60000 * 784
    _zeros_gzip(bomb, header, 256 << 20, forge_size=declared if forged else None)
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import certstudy.data.data_files, resource; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(bomb)], capture_output=True, text=True, timeout=120)
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("refused:") and str(bomb) in lines[0], run.stdout + run.stderr
    extra_mib = int(lines[-1]) - int(baseline.stdout.strip())
    assert extra_mib < 150, extra_mib  # at most the declared 47 MB (and a buffer), never the 256 MiB
