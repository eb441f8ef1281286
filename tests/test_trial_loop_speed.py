"""The fast trial loop keeps its guarantees: compact splits, seeded on-device augmentation that a
resumed trial reproduces, no per-batch host sync (and fp32 results identical to the synchronous
loop it replaced), mixed precision, and a NaN still reported with its epoch and batch."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from certstudy.cli import main
from certstudy.data import DATASETS
from certstudy.data.augmentation import Augment, augment
from certstudy.errors import TrialFailed
from certstudy.methods import METHODS, MethodContext
from certstudy.methods.base import Method
from certstudy.models.base import eval_mode
from certstudy.trial import TrialConfig, run_trial
from certstudy.trial.build import build_parts
from certstudy.trial.evaluation import Scores, evaluate
from certstudy.trial.loop import train_epoch
from conftest import checkpoint_after_epoch


def _cfg(**kw) -> TrialConfig:
    base = {
        "model": {"name": "cnn", "params": {"channels": [8], "hidden": 32}},
        "method": {"name": "adversarial", "params": {"eps": 0.05, "steps": 2}},
        "training": {"epochs": 4, "batch_size": 64, "lr": 3e-3},
        "evaluation": {"attack": {"eps": 0.05, "steps": 3}, "val_subset": 150, "test_subset": 150},
    }
    base.update(kw)
    return TrialConfig.model_validate(base)


def test_splits_stay_compact_and_become_floats_in_the_box_per_batch() -> None:
    ds = DATASETS.get("digits")
    s = ds.load(ds.Params(), 0, "/nonexistent")
    assert s.x_train.dtype == torch.uint8 and s.divisor == 16.0
    x = s.floats(s.x_train[:64])
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() == 1
    assert s.floats(x) is x  # floats pass through unchanged


def test_crop_and_flip_are_the_standard_recipe() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    torch.manual_seed(0)
    out = augment(x, Augment(crop=2, flip=True))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    for n in range(2):  # every output is a 6x6 window of the zero-padded input, possibly mirrored
        windows = [padded[n, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(2)) for w in windows)
    torch.manual_seed(0)
    assert torch.equal(augment(x, Augment(crop=2, flip=True)), out)  # the trial's seed fixes the draws
    flips = augment(torch.arange(4.0).view(1, 1, 1, 4).expand(400, 1, 1, 4), Augment(flip=True))
    mirrored = (flips[:, 0, 0, 0] == 3).float().mean()
    assert 0.4 < mirrored < 0.6 and augment(x, Augment()) is x


def _synchronous_epoch(parts, cfg, optimizer) -> float:
    """The loop before this change: a host sync (``.item()``, ``isfinite``) on every batch."""
    model, method, splits = parts.model, parts.method, parts.splits
    model.train()
    n = len(splits.y_train)
    order = torch.randperm(n)
    total, seen = 0.0, 0
    for i in range(0, n, cfg.training.batch_size):
        idx = order[i : i + cfg.training.batch_size]
        loss = method.loss(model, splits.floats(splits.x_train[idx]), splits.y_train[idx])
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / seen


def _synchronous_evaluate(model, x, y, attack, bounds, batch_size, seed) -> Scores:
    from certstudy.attacks import pgd

    gen = torch.Generator().manual_seed(seed)
    sums = torch.zeros(4, dtype=torch.float64)
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            with torch.no_grad():
                logits = model(xb)
            adv = pgd(
                model,
                xb,
                yb,
                eps=attack.eps,
                norm=attack.norm,
                steps=attack.steps,
                step_size=attack.step_size,
                random_start=attack.random_start,
                restarts=attack.restarts,
                bounds=bounds,
                generator=gen,
            )
            with torch.no_grad():
                adv_logits = model(adv)
            sums += torch.tensor(
                [
                    (logits.argmax(1) == yb).sum().item(),
                    F.cross_entropy(logits, yb, reduction="sum").item(),
                    (adv_logits.argmax(1) == yb).sum().item(),
                    F.cross_entropy(adv_logits, yb, reduction="sum").item(),
                ],
                dtype=torch.float64,
            )
    return Scores(*(sums / len(y)).tolist())


def test_fp32_results_are_identical_to_the_synchronous_loop() -> None:
    cfg = _cfg()
    runs = []
    for epoch_fn in (_synchronous_epoch, lambda p, c, o: train_epoch(p, c, o, 0)):
        torch.manual_seed(7)
        parts = build_parts(cfg, "/nonexistent", torch.device("cpu"))
        optimizer = torch.optim.Adam(parts.model.parameters(), lr=3e-3)
        losses = [epoch_fn(parts, cfg, optimizer) for _ in range(2)]
        runs.append((losses, [p.detach().clone() for p in parts.model.parameters()], parts))
    (old_losses, old_weights, parts), (new_losses, new_weights, _) = runs
    assert old_losses == new_losses  # to the last digit
    assert all(torch.equal(a, b) for a, b in zip(old_weights, new_weights))
    s = parts.splits
    attack = cfg.evaluation.attack
    old = _synchronous_evaluate(parts.model, s.floats(s.x_val), s.y_val, attack, s.bounds, 100, 3)
    new = evaluate(parts.model, s.x_val, s.y_val, attack, s.bounds, batch_size=100, seed=3, to_float=s.floats)
    assert old == new


def test_resume_is_bit_exact_with_augmentation(tmp_path: Path) -> None:
    cfg = _cfg(dataset={"augment": {"crop": 2}})
    full = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    plain = run_trial(_cfg(), lambda m, d: None, data_dir=str(tmp_path))
    assert full["train/loss"] != plain["train/loss"]  # augmentation changed training

    saved = tmp_path / "epoch1"
    checkpoint_after_epoch(cfg, 1, saved, tmp_path)
    resumed = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path), resume_from=saved)
    assert resumed == full


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu_and_resumes_exactly(tmp_path: Path, precision: str) -> None:
    cfg = _cfg(method={"name": "erm"}, training={"epochs": 4, "batch_size": 64, "lr": 3e-3, "precision": precision})
    history: list[dict] = []
    full = run_trial(cfg, lambda m, d: history.append(m), data_dir=str(tmp_path))
    assert history[-1]["train/loss"] < history[0]["train/loss"] and full["test/clean_acc"] > 0.5
    fp32 = run_trial(
        _cfg(method={"name": "erm"}, training={"epochs": 4, "batch_size": 64, "lr": 3e-3}),
        lambda m, d: None,
        data_dir=str(tmp_path),
    )
    assert full["train/loss"] != fp32["train/loss"]  # the loss really ran in reduced precision
    saved = tmp_path / f"{precision}-epoch1"
    checkpoint_after_epoch(cfg, 1, saved, tmp_path)
    state = torch.load(saved / "trial_state.pt", weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # the GradScaler's scale is trial state
    assert run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path), resume_from=saved) == full


class _NanAt(Method):
    """ERM whose loss is NaN from batch 3 of epoch 1 on."""

    def __init__(self, params, context) -> None:
        super().__init__(params, context)
        self.epoch, self.batch = 0, 0

    def on_epoch_start(self, model, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0

    def loss(self, model, x, y):
        loss = F.cross_entropy(model(x), y)
        self.batch += 1
        return loss * float("nan") if (self.epoch, self.batch - 1) >= (1, 3) else loss


def test_a_nan_loss_is_reported_with_its_epoch_and_batch() -> None:
    cfg = _cfg(method={"name": "erm"})
    parts = build_parts(cfg, "/nonexistent", torch.device("cpu"))
    parts.method = _NanAt(METHODS.get("erm").Params(), MethodContext(10, (1, 8, 8), (0.0, 1.0), torch.device("cpu"), 4))
    optimizer = torch.optim.Adam(parts.model.parameters())
    for epoch in range(2):
        parts.method.on_epoch_start(parts.model, epoch)
        if epoch == 0:
            train_epoch(parts, cfg, optimizer, epoch)
            continue
        with pytest.raises(TrialFailed, match=r"training loss became nan at epoch 1, batch 3$"):
            train_epoch(parts, cfg, optimizer, epoch)


@pytest.mark.parametrize(
    "dataset,augmentation,field,fragment",
    [
        ("digits", {"flip": True}, "dataset.augment.flip", "changes 'digits' labels"),
        ("mnist", {"crop": 4, "flip": True}, "dataset.augment.flip", "changes 'mnist' labels"),
        ("synthetic_mixture", {"crop": 2}, "dataset.augment", "is not images"),
    ],
)
def test_augmentation_that_changes_labels_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str, augmentation: dict, field: str, fragment: str
) -> None:
    path = tmp_path / "aug.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "aug",
                "dataset": {"name": dataset, "augment": augmentation},
                "model": {"name": "mlp"},
                "method": {"name": "erm"},
            }
        )
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {field}: " in err and fragment in err, err


def write_cifar(root: Path, per_batch: int, test: int, seed: int = 0) -> Path:
    """A CIFAR-10-format file set (five training batches and a test batch, pickled dicts) under ``root``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        labels = rng.integers(0, 10, count)
        images = (
            rng.integers(0, 40, (count, 3, 32, 32), dtype=np.uint8)
            + (20 * labels).astype(np.uint8)[:, None, None, None]
        )  # brightness encodes the label
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": images.reshape(count, 3072), "labels": labels.tolist()}, fh, protocol=2)
    return root


def test_cifar_batches_are_read_without_running_code(tmp_path: Path) -> None:
    root = write_cifar(tmp_path / "data", 20, 10)
    ds = DATASETS.get("cifar10")
    s = ds.load(ds.Params(root=str(root), val_size=10), 0, "/nonexistent")
    assert s.x_train.dtype == torch.uint8 and s.x_train.shape == (90, 3, 32, 32) and s.divisor == 255.0

    marker = tmp_path / "code-ran"

    class Payload:  # unpickling it would call Path.touch(marker)
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [Payload()]}, fh)
    with pytest.raises(TrialFailed, match="is not allowed in a CIFAR-10 batch"):
        ds.load(ds.Params(root=str(root), val_size=10), 0, "/nonexistent")
    assert not marker.exists()


MEMORY = textwrap.dedent(
    """
    import gc, os, sys
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import torch, certstudy.data, certstudy.models, certstudy.methods
    idle = rss()
    from certstudy.data import DATASETS
    ds = DATASETS.get("cifar10")
    s = ds.load(ds.Params(root=sys.argv[1], val_size=5000), 0, sys.argv[1])
    gc.collect()
    print(rss() - idle, sum(t.numel() * t.element_size() for t in (s.x_train, s.x_val, s.x_test)))
    """
)


def test_a_cifar_trials_splits_take_at_most_1_3x_their_uint8_size_in_host_memory(tmp_path: Path) -> None:
    root = write_cifar(tmp_path / "data", 6000, 6000)  # 36,000 images: 106 MiB as uint8
    out = subprocess.run([sys.executable, "-c", MEMORY, str(root)], capture_output=True, text=True, check=True)
    used, stored = map(int, out.stdout.split())
    assert stored == 36_000 * 3072
    assert used <= 1.3 * stored, f"{used / 2**20:.0f} MiB for {stored / 2**20:.0f} MiB of uint8 splits"


def test_evaluation_every_k_epochs_reports_on_those_and_the_last(tmp_path: Path) -> None:
    cfg = _cfg(
        method={"name": "erm"},
        training={"epochs": 5, "batch_size": 64, "lr": 3e-3},
        evaluation={"every": 2, "attack": {"eps": 0.05, "steps": 2}, "val_subset": 100, "test_subset": 100},
    )
    seen: list[int] = []
    full = run_trial(cfg, lambda m, d: seen.append(int(m["epoch"])), data_dir=str(tmp_path))
    assert seen == [1, 3, 4]
    every_epoch = run_trial(
        _cfg(
            method={"name": "erm"},
            training={"epochs": 5, "batch_size": 64, "lr": 3e-3},
            evaluation={"attack": {"eps": 0.05, "steps": 2}, "val_subset": 100, "test_subset": 100},
        ),
        lambda m, d: None,
        data_dir=str(tmp_path),
    )
    assert (
        full["test/clean_acc"] == every_epoch["test/clean_acc"]
    )  # evaluating draws from its own generator: training is unchanged
