"""Every attribute, tag and user-attr name hpo writes, spelled once.

Optuna user attributes (study and trial), MLflow tags and metric names are read back by other
processes and by later versions of hpo, so each string is defined here and imported by name.
"""

# Trial user attributes
SURPLUS = "hpo.surplus"  # a trial started past the study's target; hidden from tables

# Trial system attributes
CREATE_TOKEN = "hpo.create_token"  # unique per created trial: a retried creation finds its trial

# Trial user attributes: what a trial measured and what it cost
FOLD_SCORES = "fold_scores"  # the score of every fold trained so far, in fold order
SCORE_STD = "score_std"  # population standard deviation of FOLD_SCORES
EPOCHS = "epochs"  # epochs trained over all folds (the compute a trial used)
SECONDS = "seconds"  # wall seconds the trial trained

# Trial user attributes: why and where a trial was pruned
PRUNED_REASON = "pruned_reason"  # one sentence
PRUNED_AT = "pruned_at"  # {"fold", "epoch" (1-based or None), "rung" (Optuna step), "score"}
DIVERGED = "hpo.diverged"  # True when the loss or the evaluation turned NaN/inf

# Trial user attributes: where a trial's parameters came from
BASELINE = "hpo.baseline"  # index into the space file's `baselines`
WARM_START_FROM = "hpo.warm_start_from"  # "study#number" of the trial it was copied from

# Study user attributes
STOPPED = "hpo.stopped"  # {"reason", "finished"}: why the search stopped by itself
WARM_STARTED = "hpo.warm_started"  # {study name: trials copied}
