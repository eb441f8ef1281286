"""One trial, in plain PyTorch: config -> data, model, method -> epochs -> evaluation -> reports.

Nothing here imports Ray, Optuna or MLflow.
"""

from certstudy.trial.config import TrialConfig
from certstudy.trial.loop import Reporter, run_trial

__all__ = ["Reporter", "TrialConfig", "run_trial"]
