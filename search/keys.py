"""Every attribute, tag and alias name hpo writes, spelled once (plain strings, no imports)."""

# MLflow model registry: tags on a registered model version, and the alias of the best one.
MODEL_SCORE_TAG = "hpo.score"
MODEL_SCORE_KIND_TAG = "hpo.score_kind"
MODEL_METRIC_TAG = "hpo.metric"
CHAMPION_ALIAS = "champion"
