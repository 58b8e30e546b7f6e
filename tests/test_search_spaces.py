"""search_spaces: the spaces as data, checked against the config's fields."""
import pytest

from search_spaces import SPACES, epoch_budgets, get_space, grid, to_config_fields


def test_spaces__every_key_is_a_config_field_and_a_typo_fails_at_once():
    for name in SPACES:
        get_space(name)
    SPACES["typo"] = {"alhpa": 0.5}
    try:
        with pytest.raises(ValueError, match=r"\['alhpa'\] are not config fields"):
            get_space("typo")
    finally:
        del SPACES["typo"]


def test_paper_space__values_of_tables_4_5_6_and_lam_only_when_datasets_differ():
    space = get_space("paper")
    assert space["lam"] == 0.5
    values = {k: sorted({p[k] for p in grid(space)}) for k in ("alpha", "rho", "epochs")}
    assert values == {"alpha": [0.01, 0.1, 0.5, 0.9, 0.99], "rho": [0.25, 0.5, 0.75, 1.0], "epochs": [50, 75, 100]}
    assert len(grid(space)) == 60
    assert sorted({p["lam"] for p in grid(get_space("paper", different_ssl_data=True))}) == [0.25, 0.5, 0.75]


def test_epoch_scale__shrinks_budgets_proportionally_never_below_one():
    assert epoch_budgets(get_space("paper"), 0.1) == [5, 8, 10]
    assert epoch_budgets(get_space("paper"), 0.001) == [1]
    assert epoch_budgets(get_space("continuous")) == [50, 75, 100]
    assert to_config_fields({"epochs": 75, "alpha": 0.1}, 0.1) == {"e_ssl": 8, "e_sl": 8, "alpha": 0.1}
