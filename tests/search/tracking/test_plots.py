"""The study's plots: drawn from trials alone, None until there is something to show."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.export.build import save_figures
from search.tracking.plots import parallel_figure, slice_figure, study_figures

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "backbone": CategoricalDistribution(("test_vit", "test_resnet", "test_convnext")),
    "batch_size": IntDistribution(16, 64),
    "dropout": FloatDistribution(0.0, 0.5),
}


def _trial(number: int, value: float | None, state: TrialState = TrialState.COMPLETE, **params):
    chosen = {"lr": 1e-3, "backbone": "test_vit", "batch_size": 32, "dropout": 0.1} | params
    return create_trial(
        state=state, value=value, params=chosen, distributions=DISTRIBUTIONS, user_attrs={}
    )


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0, 0.70, lr=1e-4, backbone="test_resnet"))
    study.add_trial(_trial(1, 0.90, lr=3e-3, batch_size=48))
    study.add_trial(_trial(2, 0.80, lr=5e-2, backbone="test_convnext", batch_size=16))
    study.add_trial(_trial(3, None, TrialState.PRUNED, lr=2e-2))
    return study


def test_slice_plot_has_one_panel_per_parameter_that_varied():
    figure = slice_figure(_study().trials, metric="f1_macro")
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    # dropout is 0.1 in every trial: a panel of one value would explain nothing.
    assert titles == ["backbone", "batch_size", "lr"]
    lr_panel = next(ax for ax in figure.axes if ax.get_title() == "lr")
    assert lr_panel.get_xscale() == "log"
    backbone = next(ax for ax in figure.axes if ax.get_title() == "backbone")
    assert [t.get_text() for t in backbone.get_xticklabels()] == list(
        DISTRIBUTIONS["backbone"].choices
    )
    # Pruned trials have no cross-validated value: 3 points per panel.
    assert all(len(ax.collections[0].get_offsets()) == 3 for ax in figure.axes if ax.get_visible())


def test_parallel_coordinates_draw_each_complete_trial_and_the_best_on_top():
    figure = parallel_figure(_study().trials, metric="f1_macro", maximize=True)
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "backbone",
        "batch_size",
        "lr",
        "f1_macro",
    ]
    lines = ax.get_lines()[:3]  # one per complete trial, worst first, then the best
    assert lines[-1].get_label() == "best (trial 1)"
    assert max(lines[-1].get_ydata()) <= 1 and min(lines[-1].get_ydata()) >= 0
    # The best trial's value is the top of the value axis.
    assert lines[-1].get_ydata()[-1] == 1.0
    minimised = parallel_figure(_study().trials, metric="log_loss", maximize=False)
    assert minimised.axes[0].get_lines()[2].get_label() == "best (trial 0)"


def test_plots_wait_for_two_complete_trials_and_are_saved_when_drawn(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0, 0.7))
    assert slice_figure(study.trials, metric="f1_macro") is None
    assert parallel_figure(study.trials, metric="f1_macro", maximize=True) is None
    study.add_trial(_trial(1, 0.8, lr=1e-2))
    drawn = study_figures(study, study.trials, metric="f1_macro")
    assert all(figure is not None for figure in drawn.values()), drawn
    written = save_figures(drawn, tmp_path / "figures")
    assert written == list(drawn) and all((tmp_path / "figures" / n).is_file() for n in written)
    assert save_figures({"slice.png": None}, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
