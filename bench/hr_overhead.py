"""HR's cost: (1) an HR epoch vs a PGD-AT epoch with identical attacks, (2) closed-form weights vs
a convex solve of the same batch.

(1) Interleaved epochs on the same model, data and attack (l2 PGD-10), alternating methods so
    drifts in machine speed hit both; prints the median ratio HR / PGD-AT (target <= 1.03).
(2) ``worst_case_weights`` against the reference library's conic program (cvxpy, parametrised as
    the library builds it, compiled once; solve time only) at N = 128, 1024, 8192 (target >= 20x
    faster at 128).

Run: ``python bench/hr_overhead.py [--device cuda] [--epochs 6]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from certstudy.methods.hr import worst_case_weights
from certstudy.trial import TrialConfig
from certstudy.trial.build import build_parts
from certstudy.trial.environment import seed_everything
from certstudy.trial.loop import train_epoch
from certstudy.trial.optim import build_optimizer


def epoch_ratio(device: torch.device, epochs: int, model: str) -> tuple[list[float], list[float]]:
    attack = {"eps": 0.3, "norm": "l2", "steps": 10}
    model_cfg = {"name": "cnn"} if model == "cnn" else {"name": "mlp", "params": {"width": 256}}
    times: dict[str, list[float]] = {"adversarial": [], "hr": []}
    parts = {}
    for name, params in (("adversarial", attack), ("hr", {**attack, "alpha": 0.1, "r": 0.1})):
        cfg = TrialConfig.model_validate(
            {
                "model": model_cfg,
                "method": {"name": name, "params": params},
                "dataset": {"poisoning": {"rate": 0.2}},
                "device": device.type,
                "threads": torch.get_num_threads(),
            }
        )
        seed_everything(0, cfg.threads)
        p = build_parts(cfg, "/nonexistent", device)
        parts[name] = (cfg, p, build_optimizer(cfg.training, p.model))
    parts["hr"][1].model.load_state_dict(parts["adversarial"][1].model.state_dict())
    for epoch in range(epochs + 1):  # epoch 0 warms both up and is not counted
        for name in ("adversarial", "hr") if epoch % 2 else ("hr", "adversarial"):
            cfg, p, opt = parts[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            train_epoch(p, cfg, opt, epoch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if epoch:
                times[name].append(time.perf_counter() - t)
    return times["adversarial"], times["hr"]


def cvxpy_problem(n: int):
    """The HR_Neural_Networks primal with the losses and the worst loss as parameters (DPP)."""
    import cvxpy as cp

    losses, worst = cp.Parameter(n), cp.Parameter()
    p, q, s = cp.Variable(n + 1, nonneg=True), cp.Variable(n + 1, nonneg=True), cp.Variable(n, nonneg=True)
    alpha, r = 0.1, 0.1
    # sum rel_entr(q, p) <= r is canonicalised to the library's ExpCone(-t, q, p), sum t <= r
    cons = [cp.sum(p) == 1, q[:n] == 1.0 / n - s, q[n] == cp.sum(s), cp.sum(s) <= alpha, cp.sum(cp.rel_entr(q, p)) <= r]
    prob = cp.Problem(cp.Maximize(p[:n] @ losses + p[n] * worst), cons)
    return prob, losses, worst


def solver_ratio(n: int, reps: int) -> tuple[float, float, str]:
    import cvxpy as cp

    rng = np.random.default_rng(n)
    values = rng.gamma(2.0, 0.7, size=n)
    prob, losses, worst = cvxpy_problem(n)
    losses.value, worst.value = values, values.max()
    solvers = [s for s in ("ECOS", "CLARABEL", "SCS") if s in cp.installed_solvers()]
    for solver in solvers:  # the library's own fallback order, ECOS first
        try:
            prob.solve(solver=solver)  # compile once, as the library does
            break
        except cp.error.SolverError:
            continue
    else:
        return float("nan"), float("nan"), "all failed"
    solve = []
    for _ in range(max(1, reps // 25) if n > 1024 else reps):
        t = time.perf_counter()
        prob.solve(solver=solver)
        solve.append(time.perf_counter() - t)
    x = torch.tensor(values, dtype=torch.float32)
    worst_case_weights(x, 0.1, 0.1)
    closed = []
    for _ in range(reps):
        t = time.perf_counter()
        worst_case_weights(x, 0.1, 0.1)
        closed.append(time.perf_counter() - t)
    return statistics.median(solve), statistics.median(closed), str(solver)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    console = Console(width=120)

    pgd, hr = epoch_ratio(device, args.epochs, args.model)
    table = Table(
        title=f"(1) epoch time on digits, {args.model}, l2 PGD-10, {device} ({torch.get_num_threads()} threads), "
        f"{args.epochs} interleaved epochs each"
    )
    for col in ("method", "median s/epoch", "min", "max"):
        table.add_column(col, justify="right")
    for name, ts in (("PGD-AT", pgd), ("HR (alpha 0.1, r 0.1)", hr)):
        table.add_row(name, f"{statistics.median(ts):.3f}", f"{min(ts):.3f}", f"{max(ts):.3f}")
    ratios = [h / p for h, p in zip(hr, pgd)]
    table.add_row(
        "HR / PGD-AT (median of paired ratios) [target <= 1.03]",
        f"{statistics.median(ratios):.3f}",
        f"{min(ratios):.3f}",
        f"{max(ratios):.3f}",
    )
    # What HR adds per epoch, measured apart from the epoch-to-epoch noise of a shared machine:
    # the weights of every batch (the attack and the forward/backward are the same as PGD-AT's).
    batch, n_train = 64, 1078
    x = torch.rand(batch, device=device)
    worst_case_weights(x, 0.1, 0.1)
    t = time.perf_counter()
    for _ in range(200):
        worst_case_weights(x, 0.1, 0.1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_batch = (time.perf_counter() - t) / 200
    batches = -(-n_train // batch)
    added = batches * per_batch / statistics.median(pgd)
    table.add_row(
        f"weights: {batches} batches x {per_batch * 1e3:.3f} ms / median PGD-AT epoch", f"+{added * 100:.1f} %", "", ""
    )
    console.print(table)

    table = Table(title="(2) worst-case weights of one batch, alpha 0.1, r 0.1, CPU")
    for col in ("N", "cvxpy solve (ms)", "closed form (ms)", "speed-up [target >= 20x at 128]"):
        table.add_column(col, justify="right")
    for n in (128, 1024, 8192):
        solve, closed, solver = solver_ratio(n, args.reps)
        table.add_row(
            str(n), f"{solve * 1e3:.2f} ({solver}, solve only)", f"{closed * 1e3:.3f}", f"{solve / closed:.0f}x"
        )
    console.print(table)


if __name__ == "__main__":
    main()
