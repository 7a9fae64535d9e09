"""ContinueStudy: a persisted Optuna study runs only the trials it still lacks.

The Optuna sweeper runs `n_trials` new trials each time it starts, even on a study it loaded
from storage. Before it starts, this Hydra callback counts the trials that the study in
`hydra.sweeper.storage` already finished (complete, pruned or failed) and lowers `n_trials` to
what is left, so running the same command again completes an interrupted search of `n_trials`.
A trial that was running when the search was interrupted is not counted, and is run afresh.
A seeded sampler's seed is moved on by the finished trials, so that it draws new values.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


def finished_trials(storage: str, study_name: str) -> int | None:
    """How many trials of the stored study finished; None when there is no such study yet."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna's answer for a study that is not in the storage
        return None
    done = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    return sum(trial.state in done for trial in study.get_trials(deepcopy=False))


class ContinueStudy(Callback):
    """Hydra callback: set `hydra.sweeper.n_trials` to the trials a stored study still lacks."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        storage, name = sweeper.get("storage"), sweeper.get("study_name")
        if not storage or not name:
            return  # an in-memory study starts afresh every time
        done = finished_trials(str(storage), str(name))
        if done is None:
            return
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
