"""MNIST from a data root without copying: gzipped IDX files read in place, ``dataset.options.root`` read
only, ``$CERTSTUDY_DATA`` as the default root, and the published normalisation inside the model."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from certstudy.data import DATASETS
from certstudy.data.data_files import read_idx
from certstudy.errors import TrialFailed
from certstudy.workdir import Workdir
from conftest import shared_mnist_root


def test_shared_mnist_loads_from_gz_files_in_place() -> None:
    root = shared_mnist_root()
    ds = DATASETS.get("mnist")
    splits = ds.load(ds.Params(root=str(root), val_size=1000, train_subset=2000, test_subset=500), 0, "/nonexistent")
    assert (
        splits.x_train.shape == (2000, 1, 28, 28)
        and splits.x_val.shape == (1000, 1, 28, 28)
        and splits.x_test.shape == (500, 1, 28, 28)
    )
    x = splits.floats(splits.x_train)
    assert splits.x_train.dtype == torch.uint8 and x.min() >= 0 and x.max() == 1
    assert set(splits.y_test.tolist()) == set(range(10))
    # the official test set starts 7, 2, 1, 0, 4 (LeCun's t10k labels)
    assert splits.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.shape(ds.Params()) == ((1, 28, 28), 10) and ds.normalization(ds.Params()) == ((0.1307,), (0.3081,))


def test_idx_reader_reads_gzipped_and_plain_files_alike(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape) + data.tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "y-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), data) and np.array_equal(
        read_idx(tmp_path / "y-idx3-ubyte.gz"), data
    )
    (tmp_path / "bad").write_bytes(raw[:-3])
    with pytest.raises(TrialFailed, match="header says"):
        read_idx(tmp_path / "bad")


def test_a_root_named_in_the_study_is_never_downloaded_into(tmp_path: Path) -> None:
    ds = DATASETS.get("mnist")
    with pytest.raises(TrialFailed, match="never downloaded into"):
        ds.load(ds.Params(root=str(tmp_path / "empty")), 0, str(tmp_path / "data"))
    assert not (tmp_path / "empty").exists()


def test_certstudy_data_is_the_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTSTUDY_DATA", raising=False)
    work = Workdir.resolve(tmp_path / "w")
    assert work.data_dir == tmp_path / "w" / "data"
    monkeypatch.setenv("CERTSTUDY_DATA", str(tmp_path / "shared"))
    assert work.data_dir == tmp_path / "shared"
    work.ensure()
    assert not (tmp_path / "shared").exists()  # the work directory's own data folder is made, nothing outside it


def test_normalize_puts_the_published_statistics_inside_the_model() -> None:
    root = shared_mnist_root()
    from certstudy.trial.build import build_parts
    from certstudy.trial.config import TrialConfig

    cfg = TrialConfig.model_validate({
        "dataset": {"name": "mnist",
                    "options": {"root": str(root), "train_subset": 100, "test_subset": 50, "val_size": 50}},
        "model": {"name": "lenet", "params": {"normalize": True}},
    })  # fmt: skip
    parts = build_parts(cfg, "/nonexistent", torch.device("cpu"))
    first = parts.model[0]
    assert torch.allclose(first.mean, torch.tensor([0.1307])) and torch.allclose(first.std, torch.tensor([0.3081]))
    digits = TrialConfig.model_validate({"model": {"name": "mlp", "params": {"normalize": True}}})
    first = build_parts(digits, "/nonexistent", torch.device("cpu")).model[0]
    assert 0.2 < float(first.mean) < 0.4 and 0.3 < float(first.std) < 0.5  # the train split's own statistics
