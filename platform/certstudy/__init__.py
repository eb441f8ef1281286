"""certstudy: hyperparameter studies of certified-robust training.

The package is layered (imports point down only): cli -> study -> trial -> methods / certify ->
attacks -> data / models. Nothing below ``study`` imports Ray, Optuna or MLflow, so a trial runs
the same under Ray Tune (``certstudy launch``) and alone (``certstudy run``).
"""

__version__ = "0.1.0"
