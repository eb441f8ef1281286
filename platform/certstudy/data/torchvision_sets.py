"""MNIST, Fashion-MNIST and CIFAR-10 in their standard on-disk formats (downloaded by torchvision).

The data root is ``dataset.options.root`` (a folder holding ``MNIST/raw/`` or ``cifar-10-batches-py/``),
else ``$CERTSTUDY_DATA``, else ``<workdir>/data`` (``Workdir.data_dir``). When the files are missing
from the default root, torchvision downloads them there; offline, the loader fails with one line
saying where to put them. A root named in the study file is only read, never downloaded into.

The files are read here rather than through torchvision's dataset classes, which re-check MD5 sums
of the full archives and so refuse any subset or locally prepared copy of the same format. The IDX
reader is a few lines because torchvision's does not read the gzipped files (``*.gz``) that its
own download leaves and that shared data folders often hold; both forms are accepted. Every file is
read by the bounded, object-free readers of ``data/data_files.py``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from certstudy.data.base import DatasetParams, Splits
from certstudy.data.data_files import check_labels, read_cifar_batch, read_idx
from certstudy.data.registry import DATASETS
from certstudy.errors import TrialFailed


class VisionParams(DatasetParams):
    root: str | None = Field(
        None, min_length=1, description="data root (read only); default $CERTSTUDY_DATA, else <workdir>/data"
    )
    val_size: int = Field(5000, ge=1, description="images held out of the official train split")
    train_subset: int | None = Field(None, ge=1, description="keep only the first N remaining train images")
    test_subset: int | None = Field(None, ge=1, description="keep only the first N test images")
    download: bool = True


def _download(name: str, cls_name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, cls_name)(root=str(root), train=train, download=True)
    except Exception as exc:  # URLError, HTTPError, socket timeouts, corrupt partial files
        reason = " ".join(str(exc).split())[:120]
        raise TrialFailed(
            f"dataset {name}: files not in {root} and download failed ({reason}); place the standard files there"
        ) from None


DOWNLOAD_PROBE_TIMEOUT_S = 5.0


def _unreachable_source(cls_name: str, root: Path) -> str | None:
    """None when one of torchvision's download sources for ``cls_name`` answers; else why not."""
    import urllib.request

    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    sources = list(getattr(cls, "mirrors", None) or []) or [getattr(cls, "url", "")]
    for source in filter(None, sources):
        try:
            request = urllib.request.Request(source, method="HEAD")
            with urllib.request.urlopen(request, timeout=DOWNLOAD_PROBE_TIMEOUT_S):  # noqa: S310 - torchvision's URL
                return None
        except Exception:  # noqa: BLE001, S112 - any failure means this source is not reachable now
            continue
    return (
        f"files not in {root}, and none of torchvision's download sources ({', '.join(sources)}) answered within "
        f"{DOWNLOAD_PROBE_TIMEOUT_S:.0f} s; place the standard files there or set $CERTSTUDY_DATA"
    )


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_path(raw: Path, name: str) -> Path | None:
    """The extracted file, else its ``.gz``; None when neither exists."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_reader(folder: str) -> Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]:
    def read(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raw = root / folder / "raw"
        prefix = "train" if train else "t10k"
        image_path, label_path = (
            _idx_path(raw, f"{prefix}-{kind}") or raw / f"{prefix}-{kind}"
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        )
        images = read_idx(image_path, (28, 28))
        labels = read_idx(label_path, ())
        check_labels(label_path, labels, len(images), 10)
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    return read


def _read_cifar10(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        images, labels = read_cifar_batch(folder / name)
        xs.append(torch.from_numpy(images.copy()))
        ys.append(torch.from_numpy(labels))
    images = torch.empty((sum(len(x) for x in xs), 3, 32, 32), dtype=torch.uint8)
    torch.cat(xs, out=images)
    return images, torch.cat(ys)


def release_freed_memory() -> None:
    """Hands the loader's freed transient buffers back to the OS (glibc keeps freed heap memory for
    reuse, which would count as the trial's RSS for as long as it runs); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _present_mnist(folder: str) -> Callable[[Path], bool]:
    return lambda root: all(_idx_path(root / folder / "raw", f) is not None for f in IDX_FILES)


def _present_cifar(root: Path) -> bool:
    folder = root / "cifar-10-batches-py"
    return all((folder / f).exists() for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])


Stats = tuple[tuple[float, ...], tuple[float, ...]]


def data_root(options: VisionParams, data_dir: str) -> tuple[Path, bool]:
    """(the root to read, whether downloading into it is allowed): the study's own root is read only."""
    if options.root is not None:
        return Path(options.root).expanduser(), False
    return Path(data_dir), True  # Workdir.data_dir: $CERTSTUDY_DATA, else <workdir>/data


def _make(
    name: str,
    cls_name: str,
    shape: tuple[int, int, int],
    normalization: Stats,
    mirror_invariant: bool,
    present: Callable[[Path], bool],
    read: Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]],
) -> type:
    class VisionDataset:
        Params = VisionParams
        flip_keeps_labels = mirror_invariant

        @staticmethod
        def shape(options: VisionParams) -> tuple[tuple[int, ...], int]:
            return shape, 10

        @staticmethod
        def normalization(options: VisionParams) -> Stats:
            return normalization

        @staticmethod
        def unavailable(options: VisionParams, data_dir: str) -> str | None:
            root, may_download = data_root(options, data_dir)
            if present(root):
                return None
            if not may_download:
                return f"files not in dataset.options.root {root} (a root named in the study is never downloaded into)"
            if not options.download:
                return f"files not in {root} and download is off"
            return _unreachable_source(cls_name, root)

        @staticmethod
        def load(options: VisionParams, seed: int, data_dir: str) -> Splits:
            root, may_download = data_root(options, data_dir)
            if not present(root):
                if not may_download:
                    raise TrialFailed(
                        f"dataset {name}: files not in dataset.options.root {root} (a root named in the study is "
                        f"read, never downloaded into)"
                    )
                if not options.download:
                    raise TrialFailed(f"dataset {name}: files not in {root} and download is off")
                _download(name, cls_name, root)
            x_full, y_full = read(root, True)
            x_test, y_test = read(root, False)
            if options.val_size >= len(y_full):
                raise TrialFailed(
                    f"dataset {name}: val_size {options.val_size} leaves no training images ({len(y_full)} in the "
                    f"train files)"
                )
            perm = torch.randperm(len(y_full), generator=torch.Generator().manual_seed(seed))
            val, train = perm[: options.val_size].sort().values, perm[options.val_size :].sort().values
            if options.train_subset is not None:
                train = train[: options.train_subset]
            if options.test_subset is not None:
                x_test, y_test = x_test[: options.test_subset], y_test[: options.test_subset]
            splits = Splits(
                x_full[train], y_full[train], x_full[val], y_full[val], x_test, y_test, num_classes=10, divisor=255.0
            )
            del x_full, y_full
            release_freed_memory()
            return splits

    VisionDataset.__name__ = VisionDataset.__qualname__ = cls_name
    VisionDataset.__doc__ = (
        f"{cls_name} from the data root (downloaded by torchvision when online); normalisation {normalization}."
    )
    return DATASETS.register(name)(VisionDataset)


# Per-channel mean/std of the training sets, as the papers' code uses them (``model.params.normalize``).
# A horizontal flip keeps the label of a garment or a CIFAR object, not of a digit.
MNIST = _make(
    "mnist", "MNIST", (1, 28, 28), ((0.1307,), (0.3081,)), False, _present_mnist("MNIST"), _idx_reader("MNIST")
)
FashionMNIST = _make(
    "fashion_mnist",
    "FashionMNIST",
    (1, 28, 28),
    ((0.2860,), (0.3530,)),
    True,
    _present_mnist("FashionMNIST"),
    _idx_reader("FashionMNIST"),
)
CIFAR10 = _make(
    "cifar10",
    "CIFAR10",
    (3, 32, 32),
    ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    True,
    _present_cifar,
    _read_cifar10,
)
