"""What AutoAttack adds to a trial: seconds per 100 points for standard AutoAttack against PGD-20.

    python bench/autoattack_cost.py                  # CPU, 1 thread (a trial's share), digits MLP and CNN
    python bench/autoattack_cost.py --device cuda

Each model is first PGD-trained on digits for a few epochs (AutoAttack's cost depends on how many
points survive its first attack: every later attack runs only on those, so an untrained model is
cheap to attack and says nothing). Then, on the same fixed test points, at the radius the model
was trained for: PGD-20 with one restart (the evaluation attack of the shipped studies), standard
AutoAttack (APGD-CE, APGD-T, FAB-T, Square) and each of its four attacks alone. Columns: robust
accuracy and seconds per 100 points; the ratio is AutoAttack's time over PGD-20's.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from certstudy.attacks import pgd
from certstudy.attacks.autoattack import STANDARD_ATTACKS, autoattack_robust
from certstudy.data import DATASETS
from certstudy.models import MODELS
from certstudy.models.base import build_model

ROWS = {
    "digits MLP 64-256-256-10": ("mlp", {"width": 256, "depth": 2}),
    "digits CNN (16, 32 ch)": ("cnn", {"channels": [16, 32], "hidden": 100}),
}
EPS = {"linf": 0.1, "l2": 1.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _pgd_trained(name: str, params: dict, splits, norm: str, device: torch.device, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    factory = MODELS.get(name)
    model = build_model(factory, factory.Params(**params), splits.input_shape, splits.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = splits.floats(splits.x_train).to(device), splits.y_train.to(device)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), device=device).split(64):
            adv = pgd(model, x[idx], y[idx], eps=EPS[norm], norm=norm, steps=5)
            model.train()
            loss = F.cross_entropy(model(adv), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    _sync(device)
    t = time.perf_counter()
    robust = fn()
    _sync(device)
    return time.perf_counter() - t, robust


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5, help="PGD training epochs before timing")
    parser.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dataset = DATASETS.get("digits")
    splits = dataset.load(dataset.Params(), 0, tempfile.mkdtemp())
    x = splits.floats(splits.x_test[: args.points]).to(device)
    y = splits.y_test[: args.points].to(device)
    per100 = 100.0 / len(y)
    table = Table(
        title=f"AutoAttack vs PGD-20 on {len(y)} digits test points ({device}, {args.threads} thread(s)): robust "
        f"accuracy, seconds per 100 points"
    )
    for col in (
        "model",
        "norm, eps",
        "PGD-20 acc",
        "PGD-20 s",
        "AutoAttack acc",
        "AutoAttack s",
        "ratio",
        *(f"{a} alone s" for a in STANDARD_ATTACKS),
    ):
        table.add_column(col, justify="right")
    for label, (name, params) in ROWS.items():
        for norm in args.norms:
            model = _pgd_trained(name, params, splits, norm, device, args.epochs)
            eps = EPS[norm]

            def run_pgd() -> torch.Tensor:
                adv = pgd(
                    model, x, y, eps=eps, norm=norm, steps=20, generator=torch.Generator(device=device).manual_seed(0)
                )
                with torch.no_grad():
                    return model(adv).argmax(1) == y

            pgd_s, pgd_robust = _timed(run_pgd, device)
            aa_s, aa_robust = _timed(lambda: autoattack_robust(model, x, y, norm=norm, eps=eps, seed=0), device)
            alone = [
                _timed(lambda a=a: autoattack_robust(model, x, y, norm=norm, eps=eps, attacks=(a,), seed=0), device)[0]
                for a in STANDARD_ATTACKS
            ]
            table.add_row(
                label,
                f"{norm}, {eps:g}",
                f"{pgd_robust.float().mean():.3f}",
                f"{pgd_s * per100:.3f}",
                f"{aa_robust.float().mean():.3f}",
                f"{aa_s * per100:.2f}",
                f"{aa_s / pgd_s:.0f}x",
                *(f"{s * per100:.2f}" for s in alone),
            )
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
