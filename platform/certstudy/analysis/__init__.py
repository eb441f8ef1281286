"""Result tables for bench/ and docs/results.md: reruns of a study's best configurations and the best
trial per parameter value. Read-only over a study's records; no command of the CLI loads it."""
