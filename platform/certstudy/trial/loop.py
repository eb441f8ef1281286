"""One trial: epochs of training, evaluation after each, checkpoints (``CheckpointPolicy``), test at the end.

The trial reports through ``report(metrics, checkpoint_dir)`` and knows nothing of Ray, Optuna or
MLflow; ``certstudy launch`` passes a reporter that forwards to Ray Tune, ``certstudy run`` one
that prints. Resuming from a checkpoint restores model, optimizer, schedule, method state and RNG
streams, so a resumed trial ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from certstudy import phases
from certstudy.certify.base import Certificate
from certstudy.data.augmentation import augment
from certstudy.errors import TrialFailed
from certstudy.metric_names import BEST_EPOCH_KEY, BEST_PREFIX, LAST_EPOCH_TEST, POISONED_FIT, robust_acc_name
from certstudy.trial import checkpoint
from certstudy.trial.best import BestEpoch
from certstudy.trial.build import TrialParts, attack_at_training_radius, build_parts
from certstudy.trial.certification import certify_all
from certstudy.trial.config import CheckpointPolicy, TrialConfig
from certstudy.trial.environment import seed_everything, select_device, sum_dtype
from certstudy.trial.evaluation import Scores, clean_accuracy, evaluate
from certstudy.trial.optim import build_optimizer, build_schedule
from certstudy.trial.precision import Precision
from certstudy.trial.robustness import (
    ALARM_RESULT,
    accuracy_metrics,
    autoattack_accuracy,
    gap_metrics,
    noise_accuracy,
    pgd_accuracy,
)

AUTOATTACK_SUBSET_SEED = 0  # not the trial's seed: every trial of a study attacks the same points

Reporter = Callable[[dict[str, "float | str"], "str | None"], "StopRequest | None"]


def _fixed_subset(n: int, size: int | None, seed: int) -> Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def _scores(prefix: str, s: Scores) -> dict[str, float]:
    return {
        f"{prefix}/clean_acc": s.clean_acc,
        f"{prefix}/clean_loss": s.clean_loss,
        f"{prefix}/robust_acc": s.robust_acc,
        f"{prefix}/robust_loss": s.robust_loss,
    }


def attack_grid(
    model: torch.nn.Module, x: Tensor, y: Tensor, cfg: TrialConfig, bounds: tuple[float, float] | None
) -> dict[str, float]:
    """PGD-robust accuracy of float inputs ``x`` at every positive radius of the attack norm's grid
    (upper bounds on certified accuracy)."""
    ev = cfg.evaluation
    out = {}
    for r in ev.radii.get(ev.attack.norm, []):
        attack = ev.attack.model_copy(update={"eps": r, "step_size": None})
        s = evaluate(model, x, y, attack, bounds, batch_size=ev.batch_size, seed=cfg.seed + 16)
        out[robust_acc_name(ev.attack.norm, r)] = s.robust_acc
    return out


def train_epoch(
    parts: TrialParts,
    cfg: TrialConfig,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    precision: Precision | None = None,
) -> float:
    """One pass over the (shuffled) train split, or ``steps_per_epoch`` full-batch gradient steps;
    returns the mean training loss.

    Nothing is read back to the host inside the loop: the loss sum and the first non-finite batch
    are kept on the device and read once at the end, so a GPU never waits for the Python loop. A
    non-finite loss still fails the trial, naming the epoch and the batch where it first appeared.
    """
    model, method, splits = parts.model, parts.method, parts.splits
    precision = precision or Precision.of(cfg.training, splits.x_train.device)
    augmentation = cfg.dataset.augment
    model.train()
    n = len(splits.y_train)
    device = splits.x_train.device
    order = torch.randperm(n).to(device)
    if cfg.training.full_batch:
        batches = [order] * cfg.training.steps_per_epoch
    else:
        batches = [order[i : i + cfg.training.batch_size] for i in range(0, n, cfg.training.batch_size)]
    wide = sum_dtype(device)
    total = torch.zeros((), dtype=wide, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bad_value = torch.zeros((), dtype=wide, device=device)
    for i, idx in enumerate(batches):
        x = precision.layout(splits.floats(augment(splits.x_train[idx], augmentation)))
        with precision.autocast():
            loss = method.loss(model, x, splits.y_train[idx])
        value = loss.detach().to(wide)
        newly_bad = (first_bad < 0) & ~torch.isfinite(value)
        first_bad = torch.where(newly_bad, i, first_bad)
        bad_value = torch.where(newly_bad, value, bad_value)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        if cfg.training.grad_clip is not None:
            precision.unscale(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        precision.step(optimizer)
        total += value * len(idx)
        phases.advance(i + 1, len(batches))
    bad = int(first_bad)  # the epoch's one host sync
    if bad >= 0:
        raise TrialFailed(f"training loss became {float(bad_value)} at epoch {epoch}, batch {bad}")
    return float(total) / sum(len(idx) for idx in batches)


@dataclass(frozen=True)
class StopRequest:
    """Asked of a running trial by whoever watches its reports (the study's pruning): stop training
    now and finish on the best epoch so far."""

    reason: str
    epoch: int


@dataclass
class _Subsets:
    val: Tensor
    train: Tensor
    test: Tensor
    cert: Tensor
    cert_val: Tensor | None


def _test_scores(parts: TrialParts, cfg: TrialConfig, sub: _Subsets) -> tuple[Tensor, Tensor, Scores]:
    """The test points (as floats) and the model's clean and PGD scores on them, with the attack's
    fixed seed: the same points and attack for every model the trial evaluates."""
    splits, ev = parts.splits, cfg.evaluation
    x_test, y_test = splits.floats(splits.x_test[sub.test]), splits.y_test[sub.test]
    test = evaluate(parts.model, x_test, y_test, ev.attack, splits.bounds, batch_size=ev.batch_size, seed=cfg.seed + 13)
    return x_test, y_test, test


def _end_metrics(parts: TrialParts, cfg: TrialConfig, sub: _Subsets) -> tuple[dict[str, float | str], dict[str, bytes]]:
    """Test split, the method's own final metrics and every certificate, for the model as it is now."""
    phases.enter(phases.TESTING)
    model, splits, ev = parts.model, parts.splits, cfg.evaluation
    x_test, y_test, test = _test_scores(parts, cfg, sub)
    metrics: dict[str, float | str] = dict(_scores("test", test))
    if ev.attack_grid:
        metrics.update(attack_grid(model, x_test, y_test, cfg, splits.bounds))
    metrics.update(
        noise_accuracy(
            model, x_test, y_test, ev.noise_sigmas, splits.bounds, batch_size=ev.batch_size, seed=cfg.seed + 18
        )
    )
    test_split = dataclasses.replace(splits, x_test=x_test, y_test=y_test)
    metrics.update(parts.method.final_metrics(model, test_split, batch_size=ev.batch_size, seed=cfg.seed + 14))
    files: dict[str, bytes] = {}
    x_cert, y_cert = splits.floats(splits.x_test[sub.cert]), splits.y_test[sub.cert]
    certificates: list[Certificate] = []
    if parts.certifiers:
        val_points = (
            (splits.floats(splits.x_val[sub.cert_val]), splits.y_val[sub.cert_val])
            if sub.cert_val is not None
            else None
        )
        certified, files, certificates = certify_all(parts, cfg, (x_cert, y_cert), val_points, cfg.seed + 15)
        metrics.update(certified)
    metrics.update(_empirical_metrics(parts, cfg, x_cert, y_cert, certificates))
    return metrics, files


def _empirical_metrics(
    parts: TrialParts, cfg: TrialConfig, x_cert: Tensor, y_cert: Tensor, certificates: list[Certificate]
) -> dict[str, float | str]:
    """AutoAttack on a fixed subset of the certified points (or, without it, the attack grid's PGD on
    all of them when there are certificates to compare), and the certification gap."""
    ev, model = cfg.evaluation, parts.model
    radii = ev.radii.get(ev.attack.norm, [])
    if ev.autoattack is not None:
        if parts.splits.bounds != (0.0, 1.0):
            raise TrialFailed(
                f"evaluation.autoattack needs inputs in the box [0, 1]; this dataset's box is {parts.splits.bounds}"
            )
        points = _fixed_subset(len(y_cert), ev.autoattack.subset, AUTOATTACK_SUBSET_SEED)
        empirical = autoattack_accuracy(
            model, x_cert, y_cert, points, norm=ev.attack.norm, radii=radii, config=ev.autoattack, seed=cfg.seed + 17
        )
    elif ev.attack_grid and certificates:
        empirical = pgd_accuracy(
            model,
            x_cert,
            y_cert,
            attack=ev.attack,
            radii=radii,
            bounds=parts.splits.bounds,
            batch_size=ev.batch_size,
            seed=cfg.seed + 16,
        )
    else:
        return {}
    metrics: dict[str, float | str] = dict(accuracy_metrics(empirical))
    gaps, alarms = gap_metrics(empirical, certificates, y_cert)
    metrics.update(gaps)
    if alarms:
        metrics[ALARM_RESULT] = "negative certification gap: " + "; ".join(alarms)
    return metrics


def _check_finite(metrics: dict[str, float | str], epoch: int) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrialFailed(f"metric {bad[0]} is {metrics[bad[0]]} at epoch {epoch}")


def run_trial(
    cfg: TrialConfig, report: Reporter, *, data_dir: str, resume_from: str | Path | None = None
) -> dict[str, float | str]:
    """Trains and evaluates one configuration; returns the last report's metrics (test included).

    With ``evaluation.final_model: best``, or when ``report`` returns a ``StopRequest``, the trial
    ends with one more report: the best epoch's metrics under ``best/`` (``best/epoch`` included)
    and the test and certified metrics of the best epoch's model, whose weights are its ``model.pt``.
    """
    seed_everything(cfg.seed, cfg.threads)
    device = select_device(cfg.device)
    parts = build_parts(cfg, data_dir, device)
    cfg = attack_at_training_radius(cfg, parts.method)
    model, splits, ev = parts.model, parts.splits, cfg.evaluation
    precision = Precision.of(cfg.training, device)
    model = parts.model = precision.prepare(model)
    optimizer = build_optimizer(cfg.training, model)
    schedule = build_schedule(cfg.training, optimizer)
    val_idx = _fixed_subset(len(splits.y_val), ev.val_subset, cfg.seed + 1).to(device)
    test_idx = _fixed_subset(len(splits.y_test), ev.test_subset, cfg.seed + 3).to(device)
    sub = _Subsets(
        val=val_idx,
        train=_fixed_subset(len(splits.y_train), ev.train_subset or len(val_idx), cfg.seed + 2).to(device),
        test=test_idx,
        cert=test_idx[_fixed_subset(len(test_idx), ev.certify_subset, cfg.seed + 4).to(device)],
        cert_val=_fixed_subset(len(splits.y_val), ev.certify_val_subset, cfg.seed + 5).to(device)
        if ev.certify_val_subset
        else None,
    )
    best = BestEpoch(ev.best_metric, ev.best_mode)

    start, history = 0, []
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        if state.get("finished"):
            return dict(state["finished"])  # the trial had already ended; nothing left to run
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        parts.method.load_state_dict(state["method"])
        precision.load_state_dict(state.get("scaler", {}))
        checkpoint.set_rng_state(state["rng"])
        best.load_state_dict(state.get("best"))
        start, history = int(state["epoch"]) + 1, list(state["history"])

    metrics: dict[str, float | str] = dict(history[-1]) if history else {}
    saves = _Saves(cfg.checkpoint, report)
    try:
        for epoch in range(start, cfg.training.epochs):
            final = epoch == cfg.training.epochs - 1
            phases.enter(phases.TRAINING, epoch=epoch)
            parts.method.on_epoch_start(model, epoch)
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_epoch(parts, cfg, optimizer, epoch, precision)
            schedule.step()
            if not final and (epoch + 1) % ev.every:
                continue  # not an evaluated epoch: no evaluation, report or checkpoint
            phases.enter(phases.EVALUATING)
            val = evaluate(
                model,
                splits.x_val[sub.val],
                splits.y_val[sub.val],
                ev.attack,
                splits.bounds,
                batch_size=ev.batch_size,
                seed=cfg.seed + 11,
                to_float=splits.floats,
            )
            tr = evaluate(
                model,
                splits.x_train[sub.train],
                splits.y_train[sub.train],
                ev.attack,
                splits.bounds,
                batch_size=ev.batch_size,
                seed=cfg.seed + 12,
                to_float=splits.floats,
            )
            metrics = {
                "epoch": float(epoch),
                "train/lr": lr,
                "train/loss": train_loss,
                "train/acc": tr.clean_acc,
                "train/robust_acc": tr.robust_acc,
                "train/robust_loss": tr.robust_loss,
                **_scores("val", val),
                "gap/robust_acc": tr.robust_acc - val.robust_acc,
                "gap/robust_loss": val.robust_loss - tr.robust_loss,
                **parts.method.epoch_metrics(),
            }
            if len(splits.poisoned):
                metrics[POISONED_FIT] = clean_accuracy(
                    model,
                    splits.x_train[splits.poisoned],
                    splits.y_train[splits.poisoned],
                    batch_size=ev.batch_size,
                    to_float=splits.floats,
                )
            history.append(metrics)
            best.update(epoch, metrics, model, parts.method)
            files: dict[str, bytes] = {}
            ends_here = final and ev.final_model == "last"
            if ends_here:
                end, files = _end_metrics(parts, cfg, sub)
                metrics = {**metrics, **end}
            _check_finite(metrics, epoch)
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "method": parts.method.state_dict(),
                "scaler": precision.state_dict(),
                "rng": checkpoint.rng_state(),
                "history": history,
                "best": best.state_dict(),
            }
            if ends_here or saves.due():
                stop = saves.save(metrics, state, model.state_dict() if ends_here else None, files)
            else:
                stop = saves.report_only(metrics, state)
            if stop is not None or (final and not ends_here):
                return _finish_on_best(parts, cfg, sub, best, state, saves)
        return metrics
    except Exception:
        saves.flush()  # the last evaluated epoch's state, saved before the failure is reported
        raise


class _Saves:
    """When the trial writes its state (``CheckpointPolicy``): a report that saves carries a
    checkpoint; one that does not keeps a snapshot of the epoch's state in memory, which ``flush``
    writes (with that epoch's report again: the driver takes each epoch once) if the trial fails
    before its next save. Errors raised by ``report`` itself (Ray stopping the trial, a full disk)
    flush nothing: the driver is the one that failed."""

    def __init__(self, policy: CheckpointPolicy, report: Reporter) -> None:
        self.policy, self.report = policy, report
        self.last = time.monotonic()
        self.epochs = 0  # evaluated epochs since the last save
        self.pending: tuple[dict[str, float | str], dict] | None = None
        self.reporting = False

    def due(self) -> bool:
        return self.policy.due(time.monotonic() - self.last, self.epochs + 1)

    def _report(self, metrics: dict[str, float | str], checkpoint_dir: str | None) -> StopRequest | None:
        self.reporting = True
        stop = self.report(metrics, checkpoint_dir)
        self.reporting = False
        return stop

    def save(
        self,
        metrics: dict[str, float | str],
        state: dict,
        model_state: dict[str, Tensor] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> StopRequest | None:
        with tempfile.TemporaryDirectory(prefix="certstudy-ckpt-") as tmp:
            checkpoint.save(tmp, state, model_state, files)
            stop = self._report(metrics, tmp)
        self.last, self.epochs, self.pending = time.monotonic(), 0, None
        return stop

    def report_only(self, metrics: dict[str, float | str], state: dict) -> StopRequest | None:
        self.pending = (metrics, checkpoint.snapshot(state))
        self.epochs += 1
        return self._report(metrics, None)

    def flush(self) -> None:
        if self.pending is not None and not self.reporting:
            metrics, state = self.pending
            self.pending = None
            self.save(metrics, state)


def _last_epoch_test(parts: TrialParts, cfg: TrialConfig, sub: _Subsets) -> dict[str, float | str]:
    """Clean and PGD accuracy on the test points of the model as it is now (the last epoch's)."""
    test = _test_scores(parts, cfg, sub)[2]
    return {LAST_EPOCH_TEST[0]: test.clean_acc, LAST_EPOCH_TEST[1]: test.robust_acc}


def _finish_on_best(
    parts: TrialParts, cfg: TrialConfig, sub: _Subsets, best: BestEpoch, state: dict, saves: _Saves
) -> dict[str, float | str]:
    """The last report of a trial that ends on its best epoch (chosen, or stopped early)."""
    if best.epoch is None:
        raise TrialFailed(f"no epoch had a finite {best.metric}; there is no best epoch to finish on")
    last = _last_epoch_test(parts, cfg, sub) if best.epoch != state["epoch"] else None
    best.restore(parts.model, parts.method)
    end, files = _end_metrics(parts, cfg, sub)
    if last is None:  # the best epoch is the last one
        last = {LAST_EPOCH_TEST[0]: end["test/clean_acc"], LAST_EPOCH_TEST[1]: end["test/robust_acc"]}
    summary: dict[str, float | str] = {
        "epoch": float(state["epoch"]),
        BEST_EPOCH_KEY: float(best.epoch),
        **{f"{BEST_PREFIX}{k}": v for k, v in best.metrics.items() if k != "epoch"},
        **end,
        **last,
    }
    _check_finite(summary, int(state["epoch"]))
    saves.save(summary, {**state, "finished": summary}, parts.model.state_dict(), files)
    return summary
