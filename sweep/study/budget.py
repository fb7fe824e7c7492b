"""Which trials use up a study's budget (`hydra.sweeper.n_trials`), which failed for a reason of their
own, and the trials of workers on this host that died: the bookkeeping every worker of a shared
study does alike, so that they agree when the study is done."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from sweep.runtime import processes
from sweep.study.storage import requeue
from sweep.vocabulary import retried_trial

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS = "surplus"  # user attribute of a trial failed because the budget was met without it


def recover_local_dead_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials of workers on this host (in this PID namespace) that no longer
    exist, and queue them again.
    The journal file has no heartbeat, so on one machine this PID check is what finds them (on an
    RDB storage it only finds them sooner than the heartbeat's grace period)."""
    here = f"{processes.host()}:{processes.namespace()}"
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if where == here and pid.isdigit() and not processes.alive(int(pid)):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker recovered it first
                continue
            requeue(study, t)


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def retried(trials_: list) -> set[int]:
    return {n for t in trials_ if (n := retried_trial(t)) is not None}


def settled_trials(study: optuna.Study) -> list:
    """Trials that use up the budget (n_trials): complete, pruned, or failed for a reason of their
    own. Not counted: trials failed because their worker died (they are run again) and a worker's
    surplus ask for a trial that another worker had already taken."""
    all_trials = study.get_trials(deepcopy=False)
    again = retried(all_trials)
    return [t for t in all_trials if t.state in FINISHED or (
        t.state == TrialState.FAIL and t.number not in again and not t.user_attrs.get(SURPLUS))]


def stand_down_queued_retries(study: optuna.Study) -> list[int]:
    """Once the study is done, fail as surplus the retries still queued: a worker that asks for a
    trial while another queues a dead worker's trial again can create a new trial instead of taking
    the queued one (Optuna's ask checks the queue, then creates), and the new one then met the budget.
    Left WAITING, the retry would wait for a worker that never comes (and be run by the next command
    that resumes the study, for nothing). Configurations a user queued are left alone. Returns their
    numbers."""
    stood_down = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if retried_trial(t) is None:
            continue
        # (through the storage: study.tell refuses a waiting trial)
        study._storage.set_trial_user_attr(t._trial_id, SURPLUS, True)
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            stood_down.append(t.number)
    if stood_down:
        log.info("the study is done: queued retr(ies) %s not needed any more", stood_down)
    return stood_down


def failures(study: optuna.Study, since: int = 0) -> int:
    """Trials numbered `since` or later that failed for a reason of their own."""
    return sum(1 for t in settled_trials(study) if t.state == TrialState.FAIL and t.number >= since)


def last_settled(study: optuna.Study):
    """The trial whose end settled the study (the latest to complete)."""
    done = [t for t in settled_trials(study) if t.datetime_complete]
    return max(done, key=lambda t: (t.datetime_complete, t.number)) if done else None
