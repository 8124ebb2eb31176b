"""The Tune side of a sweep without a cluster: the param space over Tune's domains, the scheduler and the
search algorithm."""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.sweep_spec import SearchDist, SweepSpec, TuneConfig
from orchestrator.tuning import to_param_space, tune_config


def test_param_space_maps_each_kind_to_its_tune_domain() -> None:
    space = to_param_space(
        {
            "noise.alpha_max_deg": SearchDist(grid=[75.0, 85.0]),
            "loss.recon_dist": SearchDist(choice=[0.5, 1.0]),
            "loss.con_dist": SearchDist(uniform=(0.1, 1.0)),
            "optim.lr": SearchDist(loguniform=(1e-4, 1e-2)),
            "run.seed": SearchDist(randint=(0, 5)),
        }
    )
    assert space["noise.alpha_max_deg"] == tune.grid_search([75.0, 85.0])
    assert isinstance(space["loss.recon_dist"], tune.search.sample.Categorical)
    assert space["loss.recon_dist"].categories == [0.5, 1.0]
    uniform, loguniform, randint = space["loss.con_dist"], space["optim.lr"], space["run.seed"]
    assert isinstance(uniform, tune.search.sample.Float) and (uniform.lower, uniform.upper) == (0.1, 1.0)
    assert isinstance(loguniform.get_sampler(), tune.search.sample.LogUniform)
    assert isinstance(randint, tune.search.sample.Integer) and (randint.lower, randint.upper) == (0, 5)
    samples = [randint.sample() for _ in range(50)]
    assert min(samples) >= 0 and max(samples) <= 4  # high is exclusive, as the loader validates


def train_spec(search: dict[str, SearchDist], tune: TuneConfig) -> SweepSpec:
    return SweepSpec(
        name="x",
        kind="train",
        experiment=ExperimentConfig(),
        evaluate=None,
        digest="d",
        search=search,
        tune=tune,
    )


def test_tune_config_uses_the_reported_step_for_asha() -> None:
    spec = train_spec(
        {"noise.alpha_max_deg": SearchDist(grid=[80.0])},
        TuneConfig(scheduler="asha", grace_period=20, max_concurrent_trials=3),
    )
    config = tune_config(spec)
    assert isinstance(config.scheduler, ASHAScheduler) and config.scheduler._time_attr == "step"
    assert config.scheduler._max_t == spec.experiment.run.steps
    assert (config.metric, config.mode, config.max_concurrent_trials) == ("loss", "min", 3)


def test_optuna_search_samples_the_sweeps_distributions_with_the_run_seed() -> None:
    search = {"noise.alpha_max_deg": SearchDist(uniform=(70.0, 85.0))}
    spec = train_spec(search, TuneConfig(search_alg="optuna", metric="loss", num_samples=4))
    config = tune_config(spec)
    assert isinstance(config.search_alg, OptunaSearch) and config.num_samples == 4
    config.search_alg.set_search_properties("loss", "min", to_param_space(search))
    suggested = config.search_alg.suggest("trial-1")
    assert suggested is not None and 70.0 <= suggested["noise.alpha_max_deg"] <= 85.0
