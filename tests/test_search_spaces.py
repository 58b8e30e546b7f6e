"""search_spaces: the spaces as data, checked against the config's fields."""
import pytest

from search_spaces import SPACES, check as check_space, epoch_budgets, from_data as load_data, get_space, grid, \
    to_config_fields, values


def test_spaces__every_key_is_a_config_field_and_a_typo_fails_at_once():
    for name in SPACES:
        get_space(name)
    SPACES["typo"] = {"alhpa": 0.5}
    try:
        with pytest.raises(ValueError, match=r"^alhpa: not a config field; known: alpha, "):
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


# --- spaces from files --------------------------------------------------------------------------------

import json  # noqa: E402

from hypothesis import given, settings, strategies as st  # noqa: E402
from ray.tune.search.sample import Categorical, Float, Integer  # noqa: E402

from search_spaces import SpaceError, identity, label, load, read, searched, table_keys  # noqa: E402


def _write(tmp_path, text: str, suffix: str = ".yaml"):
    path = tmp_path / f"space{suffix}"
    path.write_text(text)
    return str(path)


def test_space_file__constants_lists_and_ray_tunes_distributions(tmp_path):
    path = _write(tmp_path, "alpha: [0.1, 0.9]\nrho: {uniform: [0.2, 0.8]}\nssl_lr: {loguniform: [1e-4, 1e-2]}\n"
                            "epochs: {qrandint: [10, 30, 10]}\nmask_ratio: 0.6\nbatch_size: {randint: [16, 18]}\n")
    space = load(path)
    assert isinstance(space["alpha"], Categorical) and space["alpha"].categories == [0.1, 0.9]
    assert isinstance(space["rho"], Float) and (space["rho"].lower, space["rho"].upper) == (0.2, 0.8)
    assert space["ssl_lr"].lower == 1e-4  # YAML 1.1 reads "1e-4" as a string: taken as the number it says
    assert isinstance(space["epochs"], Integer) and space["epochs"].sampler.q == 10
    assert space["mask_ratio"] == 0.6 and "lam" not in space
    # randint's upper bound is exclusive, as in Ray Tune: 16 or 17, never 18
    assert {space["batch_size"].sample() for _ in range(200)} == {16, 17}
    assert set(searched(space)) == {"alpha", "rho", "ssl_lr", "epochs", "batch_size"}
    assert identity(space) == ("alpha", "rho", "lam", "e_ssl", "e_sl", "ssl_lr", "mask_ratio", "batch_size")
    assert table_keys(space) == ["alpha", "rho", "lam", "ssl_lr", "mask_ratio", "batch_size"]
    assert label(path) == "space" and label("paper") == "paper"


def test_space_file__json_reads_as_the_same_space_as_yaml(tmp_path):
    yaml_path = _write(tmp_path, "alpha: [0.1, 0.9]\nepochs: 5\n")
    json_path = _write(tmp_path, json.dumps({"alpha": [0.1, 0.9], "epochs": 5}), ".json")
    assert read(yaml_path) == read(json_path) == {"alpha": [0.1, 0.9], "epochs": 5}


@pytest.mark.parametrize("text, message", [
    ("alhpa: 0.5", "alhpa: not a config field"),
    ("alpha: []", "alpha: an empty list: give at least one value"),
    ("alpha: {uniform: [0.9, 0.1]}", "alpha: uniform needs lo < hi"),
    ("alpha: {uniform: [0.5, 1.5]}", "alpha: must be in [0, 1], got 1.5"),
    ("ssl_lr: {loguniform: [0, 1]}", "ssl_lr: loguniform needs lo > 0"),
    ("epochs: {randint: [5, 5]}", "epochs: randint needs lo < hi (hi is exclusive)"),
    ("epochs: {randint: [2.5, 5]}", "epochs: randint takes whole numbers"),
    ("epochs: {qrandint: [5, 10, 0]}", "epochs: qrandint needs q >= 1"),
    ("alpha: {normal: [0, 1]}", "alpha: a distribution is one of"),
    ("alpha: {uniform: [0]}", "alpha: uniform takes 2 numbers"),
    ("seed: [0, 1]", "seed: is set on the command line"),
    ("fraction: [0.1, 1.0]", "fraction: is set on the command line"),
    ("epochs: 5\ne_sl: 5", "epochs: give either 'epochs' or 'e_ssl'/'e_sl', not both"),
    ("mix_step: [merged, fused]", "mix_step: 'fused' is not one of merged, separate"),
    ("[1, 2]", "must be a non-empty mapping"),
])
def test_space_file__a_bad_entry_is_one_line_naming_its_key(tmp_path, text, message):
    with pytest.raises(SpaceError, match=None) as e:
        read(_write(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_space_file__search_command_refuses_a_bad_file_with_exit_2_before_anything_starts(tmp_path, capsys):
    from tuning import search
    with pytest.raises(SystemExit) as e:
        search.main(["--space", _write(tmp_path, "alpha: []"), "--storage-path", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert "argument --space: alpha: an empty list" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_builtin_spaces__are_files_read_like_a_users():
    for name in SPACES:
        assert read(name) == read(str(__import__("search_spaces").HERE / f"{name}.yaml"))


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(0, 1, allow_nan=False), hi=st.floats(0, 1, allow_nan=False))
def test_space_file__uniform_bounds_accepted_exactly_when_lo_below_hi(tmp_path_factory, lo, hi):
    data = {"alpha": {"uniform": [lo, hi]}}
    if lo < hi:
        check_space(data)
    else:
        with pytest.raises(SpaceError, match="alpha: uniform needs lo < hi"):
            check_space(data)


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(-3, 30), hi=st.integers(-3, 30), q=st.integers(-1, 6))
def test_space_file__qrandint_epochs_values_are_inclusive_multiples(lo, hi, q):
    data = {"epochs": {"qrandint": [lo, hi, q]}}
    if lo < 1 or hi <= lo or q < 1:
        with pytest.raises(SpaceError, match="^epochs: "):
            check_space(data)
        return
    check_space(data)
    assert values(load_data(data)["epochs"]) == list(range(lo, hi + 1, q))
