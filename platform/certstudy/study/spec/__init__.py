"""The study file: schema, search space, pruning, certifiability, overrides and loading.

The lowest floor of the study layer: no Ray, Optuna or MLflow import at module level, so
``certstudy validate`` and a trial worker read a study without them.
"""
