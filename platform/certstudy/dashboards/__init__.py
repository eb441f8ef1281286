"""Study dashboards: self-contained HTML pages built from MLflow and Optuna, layouts from dashboards/*.yaml."""
