"""Running a study: the session, runner, Ray Tune trainable, callbacks, the Optuna bridge, progress,
preflight and the stop paths.

The top floor of the study layer: it imports the spec and records floors. Every touch of a Ray or
Optuna private name or patched attribute lives in ``ray_compat``.
"""
