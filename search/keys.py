"""Every attribute, tag and user-attr name hpo writes, spelled once.

Optuna user attributes (study and trial), MLflow tags and metric names are read back by other
processes and by later versions of hpo, so each string is defined here and imported by name.
"""

# Trial user attributes
SURPLUS = "hpo.surplus"  # a trial started past the study's target; hidden from tables

# Trial system attributes
CREATE_TOKEN = "hpo.create_token"  # unique per created trial: a retried creation finds its trial
