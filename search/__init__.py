"""memekit.search: what decides (training, Optuna studies, workers, export, the CLI)."""
