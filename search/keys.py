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

# Study user attributes: what a study was created with (compared on resume, read by the export)
IDENTITY_ATTR = "hpo.identity"  # {"settings", "fixed", ...}: the space's identity
RUN_CONTROL_ATTR = "hpo.run_control"  # run-control settings of the latest run (trials, timeout)
CLASSES_ATTR = "hpo.classes"  # class names, in label order
FOLD_OF_ATTR = "hpo.fold_of"  # each image's fold (-1: holdout)
DATA_ATTR = "hpo.data"  # the data source the study was created with
STUDY_UID_ATTR = "hpo.study_uid"  # random id, also written in studies/<name>/study.json

# Trial user attributes: what a trial ran with
CONFIG_ATTR = "config"  # the resolved TrainConfig as a dict
TRIAL_SPLITS_ID_ATTR = "splits_id"  # the study's splits the trial trained on
OUT_OF_MEMORY_RETRY_ATTR = "out_of_memory_retry"  # the batch sizes an out-of-memory retry used
CHECKPOINT_ERROR_ATTR = "checkpoint_error"  # why its fold checkpoints could not be written

# Study user attributes read by tracking
STUDY_RUN_ATTR = "hpo.mlflow_run_id"  # the study's MLflow run, shared by every worker
FINGERPRINT_ATTR = "hpo.fingerprint"
CONTENT_ID_ATTR = "hpo.content_id"
SPLITS_ID_ATTR = "hpo.splits_id"
SPACE_SOURCE_ATTR = "hpo.space_source"

# Trial user attributes read by tracking
TRIAL_RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run
FAIL_REASON_ATTR = "fail_reason"
TRACEBACK_ATTR = "traceback"

# MLflow tags hpo sets (users filter on these; see docs/mlflow.md)
KIND_TAG = "hpo.kind"  # one of the KIND_* values below
KIND_STUDY, KIND_TRIAL, KIND_FOLD = "study", "trial", "fold"
STUDY_TAG = "hpo.study"
STUDY_KEY_TAG = "hpo.study_key"
FOLD_TAG = "hpo.fold"
TRIAL_NUMBER_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
PRUNED_AT_TAG = "hpo.pruned_at"
PRUNED_REASON_TAG = "hpo.pruned_reason"
FAIL_REASON_TAG = "hpo.fail_reason"
STOP_REASON_TAG = "hpo.stop_reason"
DATA_TAG = "hpo.data"
METRIC_TAG = "hpo.metric"
DIRECTION_TAG = "hpo.direction"
SPLITS_ID_TAG = "hpo.splits_id"
SEARCHED_TAG = "hpo.searched"
STORAGE_TAG = "hpo.storage"
DEVICE_TAG = "hpo.device"
WORKER_TAG = "hpo.worker"
HOST_TAG = "hpo.host"
GIT_DIRTY_TAG = "hpo.git_dirty"
VERSION_TAG_PREFIX = "hpo.version."  # + a distribution's name, or python

# MLflow's own tags
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
USER_TAG = "mlflow.user"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + a view's name, on an experiment

# MLflow metric names
# Out-of-fold scores are optimistic (each fold's best epoch is chosen on them, the best trial is
# the best of many), and their names say so, as the export's `..._cv_optimistic_...` do.
SCORE_MEAN_METRIC = "cv_optimistic_mean"  # a complete trial's value: the mean over its folds
SCORE_STD_METRIC = "cv_optimistic_std"
FOLD_SCORE_METRIC = "fold_cv_optimistic"  # on the trial run, step = fold
TRIAL_SECONDS_METRIC = "trial_seconds"
EPOCHS_METRIC = "epochs"
EPOCH_SECONDS_METRIC = "epoch_seconds"
BEST_SCORE_METRIC = "best_cv_optimistic"  # a fold's best epoch; on the study run, its best trial
BEST_EPOCH_METRIC = "best_epoch"
FOLD_SECONDS_METRIC = "fold_seconds"
TRIALS_METRIC_PREFIX = "trials_"  # + complete, pruned or fail, on the study run

# MLflow artifacts
CONFIG_ARTIFACT = "config.yaml"
OOF_ARTIFACT = "oof_predictions.csv"
CONFUSION_ARTIFACT = "confusion_matrix.png"
TRACEBACK_ARTIFACT = "traceback.txt"
TRIALS_ARTIFACT = "trials.csv"
HISTORY_ARTIFACT = "optimization_history.png"
IMPORTANCE_ARTIFACT = "param_importances.png"
SLICE_ARTIFACT = "slice.png"
PARALLEL_ARTIFACT = "parallel_coordinate.png"
DATA_SUMMARY_ARTIFACT = "data_summary"  # + .json and .txt
SPACE_ARTIFACT = "space.py"

# MLflow model registry: tags on a registered model version, and the alias of the best one.
MODEL_SCORE_TAG = "hpo.score"  # the score versions are compared on: out-of-fold
MODEL_SCORE_KIND_TAG = "hpo.score_kind"
MODEL_HOLDOUT_TAG = "hpo.holdout_score"  # reported, never compared (it would turn optimistic)
MODEL_METRIC_TAG = "hpo.metric"
ROLE_TAG = "hpo.role"  # on an export's MLflow run: "export"
CHAMPION_ALIAS = "champion"

# The MLflow UI's view of a study's trials: experiment tag mlflow.sharedViewState.<this>
TRIALS_VIEW = "hpo-trials"
