"""Splits are deterministic and disjoint; poisoning flips exactly round(rate * n) train labels."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from certstudy.data import DATASETS, Poisoning, poison
from certstudy.data.base import split_indices
from certstudy.errors import TrialFailed


def _digits(seed: int):
    ds = DATASETS.get("digits")
    return ds.load(ds.Params(), seed, "/nonexistent")


def test_splits_are_deterministic_in_the_seed_and_differ_across_seeds() -> None:
    a, b, c = _digits(0), _digits(0), _digits(1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


def test_split_indices_are_disjoint_and_cover_everything() -> None:
    train, val, test = split_indices(1797, 0.2, 0.2, seed=5)
    sets = [set(train.tolist()), set(val.tolist()), set(test.tolist())]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert set.union(*sets) == set(range(1797))
    assert (len(val), len(test)) == (359, 359)


def test_digits_inputs_are_images_in_unit_box() -> None:
    s = _digits(0)
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    x = s.floats(s.x_train)
    assert s.x_train.dtype == torch.uint8 and x.min() >= 0 and x.max() <= 1


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.333])
@pytest.mark.parametrize("kind", ["uniform", "targeted"])
def test_poisoning_flips_exactly_round_rate_n_train_labels_and_never_val_or_test(rate: float, kind: str) -> None:
    clean = _digits(0)
    poisoned = poison(clean, Poisoning(rate=rate, kind=kind), seed=0)
    changed = (poisoned.y_train != clean.y_train).nonzero().flatten()
    assert len(changed) == round(rate * len(clean.y_train))
    assert torch.equal(changed, poisoned.poisoned) or rate == 0
    assert torch.equal(poisoned.y_val, clean.y_val) and torch.equal(poisoned.y_test, clean.y_test)
    assert torch.equal(poisoned.x_train, clean.x_train)


def test_targeted_poisoning_sends_source_class_to_target() -> None:
    clean = _digits(0)
    n_src = int((clean.y_train == 3).sum())
    p = poison(clean, Poisoning(rate=20 / len(clean.y_train), kind="targeted", source=3, target=8), seed=0)
    changed = p.poisoned
    assert len(changed) == 20 and (clean.y_train[changed] == 3).all() and (p.y_train[changed] == 8).all()
    with pytest.raises(TrialFailed, match="eligible"):
        poison(clean, Poisoning(rate=(n_src + 1) / len(clean.y_train), kind="targeted", source=3, target=8), seed=0)


def test_synthetic_mixture_flip_rate_and_signal() -> None:
    ds = DATASETS.get("synthetic_mixture")
    s = ds.load(ds.Params(d=50, mu_norm=3.0, beta=0.1, n_train=4000, n_val=10, n_test=4000), 0, "")
    assert s.bounds is None and s.input_shape == (50,)
    # sign<mu, x> has noisy-label error beta + (1 - 2 beta) Phi(-||mu||) (overfitting.md)
    err = ((s.x_test[:, 0] > 0).long() != s.y_test).float().mean().item()
    expected = 0.1 + 0.8 * torch.distributions.Normal(0, 1).cdf(torch.tensor(-3.0)).item()
    assert abs(err - expected) < 0.015


# --- torchvision loaders on small files in the real on-disk formats ---------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.tobytes())


def _mnist_files(root: Path, folder: str, n_train: int, n_test: int) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,), dtype=np.uint8))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_loader_reads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    _mnist_files(tmp_path, folder, 60, 20)
    ds = DATASETS.get(name)
    s = ds.load(ds.Params(val_size=10, download=False), 0, str(tmp_path))
    assert s.x_train.shape == (50, 1, 28, 28) and s.x_val.shape[0] == 10 and s.x_test.shape[0] == 20
    x = s.floats(s.x_train)
    assert s.x_train.dtype == torch.uint8 and 0 <= x.min() and x.max() <= 1 and s.y_train.dtype == torch.long


def test_cifar10_loader_reads_pickled_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 6) for i in range(1, 6)] + [("test_batch", 7)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    ds = DATASETS.get("cifar10")
    s = ds.load(ds.Params(val_size=5, download=False), 0, str(tmp_path))
    assert s.x_train.shape == (25, 3, 32, 32) and s.x_val.shape == (5, 3, 32, 32) and s.x_test.shape == (7, 3, 32, 32)


def test_missing_files_without_download_fail_in_one_line(tmp_path: Path) -> None:
    ds = DATASETS.get("mnist")
    with pytest.raises(TrialFailed) as info:
        ds.load(ds.Params(download=False), 0, str(tmp_path))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_digits_file_reader_matches_sklearn_load_digits() -> None:
    from sklearn.datasets import load_digits

    from certstudy.data.digits import _read_digits

    pixels, labels = _read_digits()
    bunch = load_digits()
    assert (pixels == bunch.data).all() and (labels == bunch.target).all()
