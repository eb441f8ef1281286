"""The study layer: study files, search spaces, Ray Tune + Optuna + MLflow, export.

Only this layer (and the CLI) imports Ray, Optuna or MLflow. Submodules are imported where they
are used, so that ``certstudy validate`` and trial workers do not pay for the heavy imports.
"""
