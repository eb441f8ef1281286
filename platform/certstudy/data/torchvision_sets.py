"""MNIST, Fashion-MNIST and CIFAR-10 in their standard on-disk formats, via torchvision.

Files live in ``<workdir>/data``. When they are missing, torchvision downloads them; offline, the
loader fails with one line saying where to put them. The files are read here (IDX through
torchvision's own reader, CIFAR-10's pickled batches directly) rather than through torchvision's
dataset classes, because those re-check MD5 sums of the full archives and so refuse any subset or
locally prepared copy of the same format.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import Field

from certstudy.data.base import DatasetOptions, Splits
from certstudy.data.registry import DATASETS
from certstudy.errors import TrialFailed


class VisionOptions(DatasetOptions):
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
        raise TrialFailed(f"dataset {name}: files not in {root} and download failed ({reason}); place the standard files there") from None


def _idx_reader(folder: str) -> Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]:
    def read(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        raw = root / folder / "raw"
        prefix = "train" if train else "t10k"
        images = read_image_file(str(raw / f"{prefix}-images-idx3-ubyte"))
        labels = read_label_file(str(raw / f"{prefix}-labels-idx1-ubyte"))
        return images.unsqueeze(1).float() / 255.0, labels.long()

    return read


def _read_cifar10(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as fh:
            batch = pickle.load(fh, encoding="latin1")  # the format is a pickle; files come from the user's data dir
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)).float() / 255.0, torch.from_numpy(np.concatenate(ys))


def _present_mnist(folder: str) -> Callable[[Path], bool]:
    return lambda root: all((root / folder / "raw" / f).exists() for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def _present_cifar(root: Path) -> bool:
    folder = root / "cifar-10-batches-py"
    return all((folder / f).exists() for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])


def _make(name: str, cls_name: str, num_classes: int, present: Callable[[Path], bool], read: Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]) -> type:
    class VisionDataset:
        Options = VisionOptions

        @staticmethod
        def load(options: VisionOptions, seed: int, data_dir: str) -> Splits:
            root = Path(data_dir)
            if not present(root):
                if not options.download:
                    raise TrialFailed(f"dataset {name}: files not in {root} and download is off")
                _download(name, cls_name, root)
            x_full, y_full = read(root, True)
            x_test, y_test = read(root, False)
            if options.val_size >= len(y_full):
                raise TrialFailed(f"dataset {name}: val_size {options.val_size} leaves no training images ({len(y_full)} in the train files)")
            perm = torch.randperm(len(y_full), generator=torch.Generator().manual_seed(seed))
            val, train = perm[: options.val_size].sort().values, perm[options.val_size :].sort().values
            if options.train_subset is not None:
                train = train[: options.train_subset]
            if options.test_subset is not None:
                x_test, y_test = x_test[: options.test_subset], y_test[: options.test_subset]
            return Splits(x_full[train], y_full[train], x_full[val], y_full[val], x_test, y_test, num_classes=num_classes)

    VisionDataset.__name__ = VisionDataset.__qualname__ = cls_name
    VisionDataset.__doc__ = f"{cls_name} from <workdir>/data (downloaded by torchvision when online)."
    return DATASETS.register(name)(VisionDataset)


MNIST = _make("mnist", "MNIST", 10, _present_mnist("MNIST"), _idx_reader("MNIST"))
FashionMNIST = _make("fashion_mnist", "FashionMNIST", 10, _present_mnist("FashionMNIST"), _idx_reader("FashionMNIST"))
CIFAR10 = _make("cifar10", "CIFAR10", 10, _present_cifar, _read_cifar10)
