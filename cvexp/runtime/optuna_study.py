"""ContinueStudy: a persisted Optuna study runs only the trials it still lacks, for its objective.

The Optuna sweeper runs `n_trials` new trials each time it starts, even on a study it loaded
from storage. Before it starts, this Hydra callback (`hydra.callbacks.continue_study` in
conf/hparams_search/) opens the study in `hydra.sweeper.storage`, and:

- **keeps its objective.** A new study is created with its direction (`hydra.sweeper.direction`,
  following `optimized_mode`) and records `optimized_metric` in its user attributes. A stored
  study continued with another metric, or another direction, is refused in one sentence that
  names the study's own metric and mode and another `hydra.sweeper.study_name`, before any
  trial runs: its trials' values would not be comparable. A study made by older code, which
  recorded no metric, is continued when its direction matches, and records the metric from then.
- **runs only what is missing.** It counts the trials that the study already finished
  (complete, pruned or failed) and lowers `n_trials` to what is left, so running the same
  command again completes an interrupted search of `n_trials`. A trial that was running when
  the search was interrupted is not counted, and is run afresh. A seeded sampler's seed is moved
  on by the finished trials, so that it draws new values.
- **numbers the new trials' folders on.** Hydra numbers a sweep's jobs from 0 every time it
  starts (`hydra.job.num`); a trial's folder is numbered `${trial_number:...}`, the job number
  plus `first_trial`, which this callback sets (for the jobs, through a Hydra override) to the
  number of trials the study held: a search of trials 0_ and 1_ continues with 2_, 3_, ..., as
  Optuna numbers its trials, and no folder number is used twice.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, open_dict, read_write

from cvexp.errors import exit_with_error
from cvexp.runtime.hydra_app import path_safe

log = logging.getLogger(__name__)

# the study's user attribute that names the metric its trials return
METRIC_ATTR = "optimized_metric"


def trial_number(job_num: Any, first_trial: Any) -> int:
    """A trial folder's number (resolver `trial_number`): the job's number in this run of the
    search plus the trials the study held when it started (`first_trial`)."""
    return int(job_num) + int(first_trial or 0)


def finished_trials(storage: str, study_name: str) -> int | None:
    """How many trials of the stored study finished; None when there is no such study yet."""
    study = stored_study(storage, study_name)
    return None if study is None else count_finished(study)


def stored_study(storage: str, study_name: str) -> Any:
    """The study `study_name` in `storage`, or None when there is no such study yet."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna's answer for a study that is not in the storage
        return None


def count_finished(study: Any) -> int:
    """The study's trials that finished: complete, pruned or failed."""
    import optuna

    done = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    return sum(trial.state in done for trial in study.get_trials(deepcopy=False))


def configured_directions(direction: Any) -> list[str]:
    """`hydra.sweeper.direction` as Optuna's lower-case names: ['maximize'], or one per objective."""
    values = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    return [str(getattr(value, "name", value)).lower() for value in values]


def stored_directions(study: Any) -> list[str] | None:
    """The study's directions as lower-case names; None while they are not set."""
    names = [direction.name.lower() for direction in study.directions]
    return None if not names or "not_set" in names else names


def how_to_choose(directions: list[str]) -> str:
    """The override that picks these directions: `optimized_mode=max`, or the sweeper's list."""
    if len(directions) == 1:
        return f"optimized_mode={directions[0][:3]}"
    return f"hydra.sweeper.direction=[{','.join(directions)}]"


def objective_mismatch(study: Any, name: str, metric: str, directions: list[str]) -> str | None:
    """The one sentence that refuses to continue `study` with this metric and these directions;
    None when they are the study's own (a study of older code has no recorded metric)."""
    recorded = study.user_attrs.get(METRIC_ATTR)
    stored = stored_directions(study)
    same_metric = recorded is None or recorded == metric
    if same_metric and (stored is None or stored == directions):
        return None
    own = stored or directions
    wanted = f"{metric} ({how_to_choose(directions)})"
    if recorded is not None:
        its = f"optimises {recorded} ({how_to_choose(own)})"
        same = f"optimized_metric={recorded} {how_to_choose(own)}"
    else:  # made by older code: its direction is all that is known
        its = f"was created to {' and '.join(own)} its metric ({how_to_choose(own)})"
        same = f"{how_to_choose(own)} and the metric it was created for"
    new_name = path_safe(f"{name}_{metric}_{'_'.join(d[:3] for d in directions)}")
    return (
        f"the Optuna study {name} {its}, so it cannot continue with {wanted}; "
        f"continue it with {same}, or start another study with "
        f"hydra.sweeper.study_name={new_name}."
    )


def own_key(callbacks: Any) -> str | None:
    """The key under `hydra.callbacks` that configures ContinueStudy (`continue_study`)."""
    target = f"{__name__}.{ContinueStudy.__name__}"
    for key, params in (callbacks or {}).items():
        if params is not None and params.get("_target_") == target:
            return str(key)
    return None


class ContinueStudy(Callback):
    """Hydra callback: keep a stored study's objective, run only the trials it still lacks, and
    number their folders on from its earlier trials (see the module's docstring)."""

    def __init__(self, first_trial: int = 0) -> None:
        # the trials the study held when the search started: set for the jobs, which read it
        # in their folder's name; a callback itself has no use for it
        self.first_trial = first_trial

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import optuna

        sweeper = config.hydra.sweeper
        storage, name = sweeper.get("storage"), sweeper.get("study_name")
        if not storage or not name:
            return  # an in-memory study starts afresh every time
        storage, name = str(storage), str(name)
        metric = str(config.get("optimized_metric", "val/acc"))
        directions = configured_directions(sweeper.direction)
        study = stored_study(storage, name)
        if study is None:  # a new study: made here, so that it records its metric
            study = optuna.create_study(
                study_name=name, storage=storage, directions=directions, load_if_exists=True
            )
            study.set_user_attr(METRIC_ATTR, metric)
            return
        refusal = objective_mismatch(study, name, metric, directions)
        if refusal is not None:
            exit_with_error(refusal)
        if METRIC_ATTR not in study.user_attrs:  # older code's study: remembered from now on
            study.set_user_attr(METRIC_ATTR, metric)
        done, held = count_finished(study), len(study.get_trials(deepcopy=False))
        wanted = int(sweeper.n_trials)
        left = max(wanted - done, 0)
        log.info(
            "Optuna study %s: %d of %d trials finished; running %d more", name, done, wanted, left
        )
        with read_write(sweeper), open_dict(sweeper):
            sweeper.n_trials = left
            if sweeper.get("sampler") and sweeper.sampler.get("seed") is not None:
                # a seeded sampler would draw the first run's values again
                sweeper.sampler.seed = int(sweeper.sampler.seed) + done
        key = own_key(config.hydra.get("callbacks"))
        if key is not None and held:
            with read_write(config.hydra), open_dict(config.hydra):
                # every job's config is composed again from these overrides ('++': the key may
                # be missing from a config of older code)
                config.hydra.overrides.hydra.append(f"++hydra.callbacks.{key}.first_trial={held}")
