"""The PyTorch side of hpo: data, cache, augmentation, models, losses, the training loop.

This package imports neither optuna nor mlflow; the study side (`search`) drives it through
`trainer.loop.fit` and `trainer.types.FitHook` hooks.
"""
