r"""Hyperparameter search: ``condmonge tune`` and :func:`tune` (Optuna, TPE and median pruning).

Every trial trains one map with :func:`~condmonge.train.fit.fit_map` on the settings it draws
and is scored by ``loop.best_val_loss``, the validation fitting term (a Sinkhorn divergence,
comparable across Monge-gap weights) that also picks the trained map's best parameters
(lower is better).

**What the search is tuned on.** That validation value is computed on a validation set that
``fit`` carves out of the *training* data: held-back training conditions of the kind the
question asks (combinations whose singles stay in training for a combination holdout,
perturbations, (perturbation, cell type) pairs, doses), or held-back cells of the training
conditions when too few conditions exist (``data.validation``; see
:mod:`condmonge.data.validation`). The conditions given as ``holdout`` (and, on the
command line, the ``test`` side of a split column) are removed before any trial sees the
data, so no setting is ever chosen on the test conditions.

The study lives in SQLite, ``RUN_DIR/study.db``: a run killed at any point continues where it
stopped when started again (finished trials are kept; a trial left running by a dead process
is marked failed and a new one takes its place), and several processes, on one host or
several that share the directory, can work on one study at once. The budget ``n_trials``
counts finished trials (complete or pruned) of the whole study.

Outputs in ``RUN_DIR``: ``best.yaml`` (a full config; ``condmonge train --config best.yaml``
with the same data options retrains the best trial), ``trials.csv`` and ``tune.png``.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import anndata as ad
import optuna
import pandas as pd
import sqlalchemy.exc
import yaml
from matplotlib.figure import Figure
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from condmonge.conditions.encoding import Embeddings
from condmonge.config import Config, read_yaml_mapping
from condmonge.data.spec import Condition
from condmonge.errors import ConfigError, TrainingError, suggest
from condmonge.files import replace_atomically
from condmonge.train.fit import fit_map

__all__ = [
    "DEFAULT_SPACE",
    "TuneResult",
    "best_config",
    "build_space",
    "fail_dead_trials",
    "load_space",
    "make_sampler",
    "open_study",
    "parse_space",
    "suggest_params",
    "trials_table",
    "tune",
]

#: The search space: dotted config key -> ``{low, high[, log][, step]}`` or ``{choices}``.
#: Integer keys (``model.n_layers``) draw integers. ``data.n_pca`` joins for wide inputs
#: (see :data:`PCA_SPACE`).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "loss.monge_gap_weight": {"low": 0.1, "high": 10.0, "log": True},
    "loss.monge_gap_epsilon": {"low": 0.005, "high": 0.2, "log": True},
    "loss.fit_epsilon": {"low": 0.005, "high": 0.2, "log": True},
    "model.hidden_dim": {"choices": [64, 128, 256]},
    "model.n_layers": {"low": 2, "high": 5},
    # Around the default 3e-3 (it was this range's upper end, 1e-4-3e-3, until 2026-12-04).
    "train.learning_rate": {"low": 3e-4, "high": 1e-2, "log": True},
    "train.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "train.steps": {"low": 500, "high": 3000, "step": 500},
    "model.prior": {"choices": ["none", "nearest", "linear"]},
}

#: Latent sizes searched when the map would act on more than :data:`WIDE_INPUT` features
#: (``X`` without ``data.use_rep``) and the base config leaves ``data.n_pca`` at its default.
PCA_SPACE: dict[str, dict[str, Any]] = {"data.n_pca": {"choices": [16, 32, 50, 100]}}
WIDE_INPUT = 100

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_SPEC_FIELDS = {"low", "high", "log", "step", "choices"}
_SECTIONS = tuple(Config.model_fields)

Space = dict[str, BaseDistribution]


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found.

    Attributes:
      study: the Optuna study (every trial of ``study.db``).
      best_config: the base config with the best trial's settings (what ``best.yaml`` holds).
      best_value: the best trial's validation value.
      best_trial: the best trial's number.
      n_finished: finished (complete or pruned) trials in the study.
      files: ``{"best", "trials", "plot", "study"}`` -> path in the run directory.
    """

    study: optuna.Study
    best_config: Config
    best_value: float
    best_trial: int
    n_finished: int
    files: dict[str, Path]


# ----------------------------------------------------------------------------- the space


def load_space(path: str | Path) -> dict[str, BaseDistribution | None]:
    """Read a space YAML: ``section.key: {low, high, log, step}`` or ``{choices: [...]}``.

    Keys may also be nested under their section (``loss: {fit_epsilon: {...}}``). An entry
    replaces the default of its key; ``null`` removes a default key from the search.

    Args:
      path: the YAML file.

    Raises:
      ConfigError: the file is missing or not YAML, names keys that are not config keys, or
        gives a range or choices the config would reject.
    """
    return parse_space(read_yaml_mapping(path, "space file"), source=f"space file '{path}'")


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss": {"fit_epsilon": spec}}`` and ``{"loss.fit_epsilon": spec}`` alike, flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key in _SECTIONS and isinstance(value, Mapping):
            flat.update({f"{key}.{leaf}": spec for leaf, spec in value.items()})
        else:
            flat[str(key)] = value
    return flat


def _field_annotation(key: str) -> Any:
    """The type annotation of the config key ``section.key``, or ``None`` if there is none."""
    section, _, leaf = key.partition(".")
    sub = Config.model_fields.get(section)
    if sub is None or not leaf:
        return None
    field = sub.annotation.model_fields.get(leaf)
    return None if field is None else field.annotation


def _is_integer(annotation: Any) -> bool:
    return annotation is int or int in get_args(annotation)


def parse_space(
    tree: Mapping[str, Any], source: str = "space"
) -> dict[str, BaseDistribution | None]:
    """Check a space mapping (as :func:`load_space` reads it) and turn it into distributions.

    Args:
      tree: ``{"section.key": spec or None}`` (or nested by section).
      source: how messages name it.

    Returns:
      ``{key: distribution}``, ``None`` for keys removed from the default space.
    """
    flat = _flatten(tree)
    unknown = [k for k in flat if _field_annotation(k) is None]
    if unknown:
        names = ", ".join(f"'{k}'" for k in unknown)
        known = [
            f"{s}.{k}" for s in _SECTIONS for k in Config.model_fields[s].annotation.model_fields
        ]
        raise ConfigError(
            f"{source}: unknown config key(s) {names}{suggest(unknown[0], known)}; a space names "
            "keys of `condmonge config` as section.key, e.g. loss.fit_epsilon: {low: 0.01, "
            "high: 0.1, log: true}"
        )
    return {k: None if v is None else _distribution(k, v, source) for k, v in flat.items()}


def _distribution(key: str, spec: Any, source: str) -> BaseDistribution:
    """One entry of the space as an Optuna distribution, checked against the config."""
    where = f"{source}: '{key}'"
    if not isinstance(spec, Mapping) or not spec or set(spec) - _SPEC_FIELDS:
        extra = sorted(set(spec) - _SPEC_FIELDS) if isinstance(spec, Mapping) else []
        raise ConfigError(
            f"{where} must be {{low: A, high: B[, log: true][, step: S]}} or {{choices: [...]}}"
            + (f"; unknown field(s) {', '.join(extra)}" if extra else "")
        )
    try:
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list | tuple):
                raise ValueError("choices must be a list, alone")
            dist: BaseDistribution = CategoricalDistribution(list(spec["choices"]))
            values = list(spec["choices"])
        else:
            low, high = spec.get("low"), spec.get("high")
            if low is None or high is None:
                raise ValueError("a range needs both low and high")
            kind = IntDistribution if _is_integer(_field_annotation(key)) else FloatDistribution
            step = {"step": spec["step"]} if "step" in spec else {}  # int ranges: 1 by default
            dist = kind(low, high, log=bool(spec.get("log", False)), **step)
            values = [dist.low, dist.high]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}".splitlines()[0]) from None
    for value in values:  # each end of the range (each choice) must make a valid config
        try:
            Config().updated({key: value})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {value!r} is not a valid value ({exc})") from None
    return dist


def build_space(
    base: Config, n_features: int, overrides: Mapping[str, BaseDistribution | None] | None = None
) -> Space:
    """The space searched: the defaults (with ``data.n_pca`` for wide inputs), then ``overrides``.

    Args:
      base: the base config (``data.n_pca`` is searched only if it is at its default and
        ``data.use_rep`` is unset).
      n_features: the number of features the map would act on without a PCA.
      overrides: from :func:`load_space`; ``None`` entries remove default keys.
    """
    defaults = dict(DEFAULT_SPACE)
    wide = base.data.use_rep is None and n_features > WIDE_INPUT
    if wide and base.data.n_pca == Config().data.n_pca:
        defaults |= {k: {"choices": [c for c in v["choices"] if c < n_features]}
                     for k, v in PCA_SPACE.items()}  # fmt: skip
    space: dict[str, BaseDistribution | None] = dict(parse_space(defaults, "default space"))
    space |= dict(overrides or {})
    return {k: v for k, v in space.items() if v is not None}


def suggest_params(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Draw one value per key of ``space`` from ``trial``; ``{dotted key: value}``.

    Args:
      trial: the Optuna trial.
      space: ``{dotted config key: distribution}`` (:func:`build_space`).
    """
    drawn: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            drawn[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            drawn[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            drawn[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return drawn


# ----------------------------------------------------------------------------- the study


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """The seeded TPE sampler of every study (with the constant liar, for parallel workers).

    Args:
      seed: its seed; the same seed and the same finished trials give the same suggestions.
    """
    with warnings.catch_warnings():  # the constant liar is "experimental" in Optuna 4
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # The liar makes parallel workers avoid the settings of each other's running trials.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def open_study(
    storage_dir: str | Path, study_name: str, seed: int, warmup_steps: int = 0
) -> optuna.Study:
    """Create or load the study in ``storage_dir/study.db``, with a seeded TPE sampler.

    The sampler's seed is ``seed`` plus the number of trials already in the study, so that a
    fresh study is reproducible and a resumed one (or a second process) does not redraw the
    first trials' settings.

    Args:
      storage_dir: the run directory (created if absent).
      study_name: the study's name inside ``study.db``.
      seed: the sampler's seed.
      warmup_steps: training steps before which the median pruner never prunes.
    """
    Path(storage_dir).mkdir(parents=True, exist_ok=True)
    storage = _storage(f"sqlite:///{Path(storage_dir).absolute() / 'study.db'}")
    existing = optuna.create_study(
        storage=storage, study_name=study_name, direction="minimize", load_if_exists=True
    )
    n_trials = len(existing.get_trials(deepcopy=False))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_steps)
    return optuna.load_study(
        study_name=study_name, storage=storage, sampler=make_sampler(seed + n_trials), pruner=pruner
    )


def _storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """The study database at ``url``, retried while another process creates its tables.

    Processes that open a new ``study.db`` at the same moment race to create its tables and
    to stamp its schema version: the loser's ``CREATE TABLE`` fails ("table ... already
    exists", an ``OperationalError``) or its version row collides with the winner's ("UNIQUE
    constraint failed: alembic_version", an ``IntegrityError``; seen in CI). Once the winner
    is done, a new attempt finds the tables and the version there.
    """
    for attempt in range(attempts - 1):
        try:
            return _open_storage(url)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            time.sleep(0.2 * (attempt + 1))
    return _open_storage(url)


def _open_storage(url: str) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Heartbeats let a process on another host find trials whose process died.
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}},  # several writers wait, not fail
            heartbeat_interval=60,
            grace_period=300,
        )


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark failed the running trials whose process, on this host, no longer exists.

    A process killed mid-trial leaves its trial ``RUNNING``; it is not counted in the budget
    and a new trial takes its place. (Trials of other hosts are failed by Optuna's heartbeat
    check, after its grace period.)

    Returns:
      The numbers of the trials marked failed.
    """
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or _alive(int(attrs.get("pid", -1))):
            continue
        if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _objective(
    adata: ad.AnnData,
    base: Config,
    space: Space,
    held: tuple[Sequence[str], Sequence[Condition]],
    embeddings: Embeddings | None,
) -> Callable[[optuna.Trial], float]:
    """``objective(trial)``: train on the drawn settings, return ``loop.best_val_loss``.

    ``held``: the ``holdout`` labels and the ``test_conditions`` of :func:`tune`.
    """

    def report(trial: optuna.Trial, step: int, value: float) -> None:
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (validation value {value:.4g})")

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        config = base.updated(suggest_params(trial, space) | {"train.progress": False})
        try:
            trained = fit_map(
                adata,
                config,
                embeddings=embeddings,
                holdout=held[0],
                test_conditions=held[1],
                on_validation=lambda step, value: report(trial, step, value),
            )
        except TrainingError as exc:  # diverged (non-finite loss): a bad setting, not a bug
            trial.set_user_attr("error", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        value = float(trained.loop.best_val_loss)
        trial.set_user_attr("best_step", int(trained.loop.best_step))
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"validation value {value}")
        return value

    return objective


# ----------------------------------------------------------------------------- outputs


def best_config(study: optuna.Study, base: Config) -> Config:
    """``base`` with the settings of the study's best complete trial.

    Raises:
      TrainingError: no trial has completed (every one was pruned or failed).
    """
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TrainingError(
            f"no trial of study '{study.study_name}' completed (all pruned or failed); widen the "
            "space (e.g. lower train.learning_rate) or run more trials"
        )
    return base.updated(dict(study.best_trial.params))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, duration_s, best_step, then its settings."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration is not None else None
        value = t.value if t.state == TrialState.COMPLETE else None
        if t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]  # the last one reported
        rows.append({"number": t.number, "state": t.state.name, "value": value,
                     "duration_s": duration, "best_step": t.user_attrs.get("best_step"),
                     **t.params})  # fmt: skip
    columns = ["number", "state", "value", "duration_s", "best_step"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def plot_trials(table: pd.DataFrame, path: Path) -> Path:
    """Validation value per trial (pruned ones at their last value) and the best so far."""
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    done = table[table["state"] == "COMPLETE"]
    pruned = table[(table["state"] == "PRUNED") & table["value"].notna()]
    ax.scatter(done["number"], done["value"], s=18, color="C0", label="complete")
    ax.scatter(pruned["number"], pruned["value"], s=18, marker="x", color="0.6", label="pruned")
    if len(done):
        best = done.sort_values("number")
        ax.step(best["number"], best["value"].cummin(), where="post", color="C3", label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation value (lower is better)")
    ax.legend(frameon=False, fontsize=8)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    return path


def _best_yaml_text(study: optuna.Study, config: Config, holdout: Sequence[str]) -> str:
    best = study.best_trial
    held = f" --holdout {','.join(holdout)}" if holdout else ""
    header = [
        f"# condmonge tune: best of {_n_finished(study)} finished trials of study "
        f"'{study.study_name}': trial {best.number}, validation value {best.value:.6g}",
        "# (scored on the validation set fit carves out of the training data; the held-out "
        "conditions were never seen)",
        f"# reproduce: condmonge train DATA --config best.yaml{held} --out RUN "
        "(with tune's other data options)",
    ]
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return "\n".join(header) + "\n" + body


def _write_outputs(study: optuna.Study, base: Config, out: Path, holdout: Sequence[str]):
    table = trials_table(study)
    files = {"trials": out / "trials.csv", "plot": out / "tune.png", "best": out / "best.yaml"}
    replace_atomically(files["trials"], lambda tmp: table.to_csv(tmp, index=False))
    plot_trials(table, files["plot"])
    config = best_config(study, base)
    text = _best_yaml_text(study, config, holdout)
    replace_atomically(files["best"], lambda tmp: tmp.write_text(text))
    return config, files | {"study": out / "study.db"}


# ----------------------------------------------------------------------------- the search


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials, best {task.fields[best]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def _search(study: optuna.Study, objective, n_trials: int, timeout: float | None, progress: bool):
    """Run trials until the study holds ``n_trials`` finished ones (or ``timeout`` seconds)."""
    remaining = n_trials - _n_finished(study)
    if remaining <= 0:
        return
    bar = _progress(progress)
    task = bar.add_task("tune", total=n_trials, completed=n_trials - remaining, best="-")

    def advance(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = f"{min(t.value for t in complete):.4g}" if complete else "-"
        bar.update(task, completed=min(_n_finished(study), n_trials), best=best)

    with bar:
        study.optimize(
            objective,
            n_trials=remaining,  # this process's share; the callback stops at the study's total
            timeout=timeout,
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, FINISHED), advance],
            gc_after_trial=True,
        )


def tune(  # noqa: PLR0913  the options of one search
    adata: ad.AnnData,
    config: Config,
    space: Mapping[str, BaseDistribution | None] | None = None,
    n_trials: int = 20,
    *,
    storage_dir: str | Path,
    study_name: str = "condmonge",
    holdout: Sequence[str] = (),
    test_conditions: Sequence[Condition] = (),
    embeddings: Embeddings | None = None,
    seed: int = 0,
    timeout: float | None = None,
    progress: bool = True,
) -> TuneResult:
    r"""Search the hyperparameters of ``config`` on ``adata`` until ``n_trials`` have finished.

    The objective is ``loop.best_val_loss`` of each trained map: the validation value on what
    ``fit`` carves out of the training data, never on ``holdout`` (see the module docstring).

    Args:
      adata: cells x genes, annotated as ``config.data`` says (the training side only).
      config: the base config (with the data spec); each trial changes only the keys of the
        space. Every trial trains with ``train.seed = seed``.
      space: overrides of the default space (:func:`load_space`); ``None``: the defaults.
      n_trials: finished (complete or pruned) trials wanted in the study, counting those of
        earlier runs and of other processes.
      storage_dir: the run directory: ``study.db``, ``best.yaml``, ``trials.csv``,
        ``tune.png``.
      study_name: the study inside ``study.db``.
      holdout: condition labels kept out of every trial's training and validation.
      test_conditions: test conditions absent from ``adata`` (the test side of a split
        column); with ``holdout`` they decide the kind of validation conditions, as in
        :func:`~condmonge.train.fit.fit_map`.
      embeddings: condition tables, as for :func:`~condmonge.train.fit.fit_map`.
      seed: the sampler's seed and every trial's training seed.
      timeout: stop starting trials after this many seconds (``None``: no limit).
      progress: show a progress bar of the trials.

    Returns:
      The study, the best config (also written to ``best.yaml``) and its value.
    """
    out = Path(storage_dir)
    base = config.updated({"train.seed": seed})
    base.data.spec.validate(adata, require_treated=True)  # a wrong key fails before any trial
    rep = base.data.use_rep
    n_features = adata.n_vars if rep is None else adata.obsm[rep].shape[1]
    searched = build_space(base, n_features, space)
    study = open_study(out, study_name, seed, warmup_steps=3 * base.train.validate_every)
    fail_dead_trials(study)
    objective = _objective(adata, base, searched, (holdout, test_conditions), embeddings)
    try:
        _search(study, objective, n_trials, timeout, progress)
    except BaseException:  # Ctrl-C or an error: the outputs still show what has finished
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            _write_outputs(study, base, out, holdout)
        raise
    best, files = _write_outputs(study, base, out, holdout)
    return TuneResult(
        study, best, float(study.best_value), study.best_trial.number, _n_finished(study), files
    )
