"""The export's run-time side: load an exported ensemble and predict with it.

It lives in `trainer`, not `search/export`, because a prediction needs only PyTorch, timm and
this package: the MLflow model ships `trainer` as its code, and `hpo predict` loads an export
without optuna, mlflow or `search` (docs/architecture.md).
"""
