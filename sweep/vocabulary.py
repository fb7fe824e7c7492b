"""The store's vocabulary: every tag, artifact file and trial attribute that a run or a study of this
project writes, named once, with accessors for what is read back. MLflow keeps its own names in one
module (mlflow.utils.mlflow_tags) and Optuna reads its retry attribute only through an accessor
(RetryFailedTrialCallback.retried_trial_number); so do we. Integrity, reproduce, upload, promote and
analysis/ import the names from here, and the architecture test fails on a tag or trial-attribute
name written as a literal anywhere else.

The bottom layer of sweep/ beside config.py: it imports nothing of the project.
"""

from __future__ import annotations

# MLflow's own tags that the project reads (mlflow.utils.mlflow_tags names them the same).
RUN_NAME = "mlflow.runName"
PARENT_RUN = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # the run's description in the UI

# What a run is.
METHOD = "method"            # the method group's name; STUDY_METHOD on a study's parent run
MODEL = "model"
TASKS = "tasks"
SEED = "seed"
STAGE = "stage"              # sft | reward | dpo | grpo | rloo | ppo
SWEEP_ID = "sweep_id"        # shared by the jobs of one multirun (and a study's trials)
BASE_MODEL, BASE_MODEL_PATH = "base_model", "base_model_path"
MACHINE = "machine"          # its GPU, or cores and CPU model, and torch's version
WORLD_SIZE = "world_size"    # training processes (DDP/FSDP/DeepSpeed)
GIT_COMMIT, GIT_DIRTY = "git_commit", "git_dirty"
ERROR = "error"              # a failed run's first line
STUDY_METHOD = "optuna-study"  # the METHOD of an Optuna study's MLflow parent run

# The process that owns a RUNNING run (a run left RUNNING by a dead one is closed KILLED).
HOST, PID, PID_START, PID_NAMESPACE = "host", "pid", "pid_start", "pid_namespace"

# Lineage: the run a stage started from, and the reward model that trained or judged it.
PARENT_TAG, PARENT_STAGE = "parent_run_id", "parent_stage"
JUDGE_TAG = "judge_run_id"

# Optuna's trials as MLflow runs.
STUDY_NAME = "optuna.study_name"
TRIAL_NUMBER = "optuna.trial_number"
TRIAL_STATE = "optuna.state"           # PRUNED on a pruned trial's run
INFEASIBLE_TAG = "optuna.infeasible"   # which constraint a trial broke, and by how much
SUPERSEDED_BY = "superseded_by_trial"  # a late trial's run, closed for the retry that replaced it

# Hashes that reuse and check-store verify, and what reuse records.
ADAPTER_SHA_TAG = "adapter_manifest_sha256"  # of the adapter folder's MANIFEST.json: every file of it, config
                                             # included; checked wherever the adapter is loaded, and by check-store
OLD_ADAPTER_SHA_TAG = "adapter_sha256"       # (runs from before: the weights alone hashed, the config outside it)
RESULTS_HASH_TAG = "results_sha256"          # of lm_eval_results.json, checked before the baseline cache reuses it
SCORES_HASH_TAG = "scores_sha256"            # of baseline_scores.json: what the baseline cache reuses
BASELINE_KEY_TAG = "baseline_key"            # a freshly scored baseline's cache key
CACHED, CACHED_FROM = "cached", "cached_from"  # "true": scores reused from that run
REFERENCE_KEY_TAG, REFERENCE_SHA_TAG, REFERENCE_FROM_TAG = (
    "reference_key", "reference_sha256", "reference_replies_from")
GENERATED_SHA_TAG = "generated_sha256"       # of a generation run's tasks.jsonl

# The strongest baseline's choice (and the overrides of the equivalent stand-alone run).
BASELINE_VARIANT, BASELINE_TEMPLATE = "baseline.variant", "baseline.template"
BASELINE_NUM_FEWSHOT = "baseline.num_fewshot"
BASELINE_SAMPLER, BASELINE_CALIBRATE = "baseline.fewshot_sampler", "baseline.calibrate"
BASELINE_REPRODUCE = "baseline.reproduce"
BASELINE_SEARCH = "baseline.search"            # what the chosen variant was chosen among, as a claim names it
BASELINE_TAG_PREFIX = "baseline."

# What other commands add to a run.
REPRODUCES, REPRODUCE_MATCH = "reproduces", "reproduce_match"  # reproduce.py's new run
CONFIRMS = "confirms"        # a run that retrains a sweep's chosen configuration with another seed (confirm.py)
ADAPTER_UPLOADED_LATER, ADAPTER_UPLOAD_ERROR = "adapter_uploaded_later", "adapter_upload_error"  # make upload
VERDICT_TAG_PREFIX = "verdict."  # an adapter's verdict as tags: verdict.<task>/<metric> and its .detail
VERDICT_PREFIX = "verdict/"      # the same as metrics: verdict/<task>/<metric>/diff, ...
# eval.sequential=true: a run's test pass waits for the sweep's choice (deferred), then settle.py scores the
# chosen arms' test examples block by block until the verdict is decided (settled)
TEST_PASS, DEFERRED, SETTLED = "test_pass", "deferred", "settled"

# Artifact files and folders.
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
RESULTS = "lm_eval_results.json"
SCORES = "baseline_scores.json"
BASELINE_PANEL = "baseline_panel.json"
LEAKAGE = "leakage.json"     # the leakage audit's flagged test examples, per task (sweep/scoring/leakage.py)
JUDGED_REPLIES = "judged_replies.json"  # each reply, the reference's, their rewards (MLflow table)
DEV_JUDGED_REPLIES = "dev_" + JUDGED_REPLIES  # the same on the development prompts
# eval.fewshot_sampler=retrieved: per task, each scored example's doc_id -> its demonstrations' pool indices
RETRIEVED_DEMONSTRATIONS = "retrieved_demonstrations.json"
DEV_RETRIEVED_DEMONSTRATIONS = "dev_" + RETRIEVED_DEMONSTRATIONS  # the same on the development examples
REFERENCE_REPLIES = "reference_replies.json"
REWARD_SCORES = "reward_scores.json"  # stage=reward: each held-out pair's rewards (MLflow table)
GENERATED_DIR, GENERATED_TASKS = "generated", "tasks.jsonl"

# Optuna trial and study attributes.
RETRY_OF = "retry_of"                # on a trial queued again for a failed one: the failed one's number
PARENT_ATTR = "mlflow_parent_run_id"  # the study user attribute that names its MLflow parent run
UPLOADED_LATER_ATTR = ADAPTER_UPLOADED_LATER  # on a trial told COMPLETE by make upload: the run it counted


def tag_column(tag: str) -> str:
    """The column of `tag` in mlflow.search_runs' DataFrame."""
    return f"tags.{tag}"


def tag_field(tag: str) -> str:
    """`tag` as a field of an MLflow search filter (backquoted: the name may hold dots)."""
    return f"tags.`{tag}`"


def retried_trial(trial) -> int | None:
    """The number of the failed trial `trial` was queued again for; None for a first attempt."""
    return trial.user_attrs.get(RETRY_OF)


def retry_attrs(failed_number: int) -> dict:
    """The user attributes that mark a trial queued again for trial `failed_number`."""
    return {RETRY_OF: failed_number}
