import math

import pytest

from trainable.schedule import MIX, SL, SSL, PhasePlan, e_mix, lr_at, phase_plan


@pytest.mark.parametrize("e_ssl, e_sl, rho, expected", [
    (100, 100, 0.5, 50),
    (100, 100, 0.0, 0),  # SSL+SL baseline
    (100, 100, 1.0, 100),
    (100, 100, 0.29, 29),  # no float surprise: 0.29 * 100 = 28.999...
    (50, 100, 0.75, 37),  # min(e_ssl, e_sl) = 50 -> floor(37.5)
    (100, 75, 0.25, 18),
    (0, 100, 0.5, 0),  # SL baseline
    (3, 3, 0.5, 1),
])
def test_e_mix__eq1_table(e_ssl, e_sl, rho, expected):
    assert e_mix(e_ssl, e_sl, rho) == expected


@pytest.mark.parametrize("e_ssl, e_sl, rho, expected", [
    (100, 100, 0.5, PhasePlan(50, 50, 50)),
    (100, 100, 0.0, PhasePlan(100, 0, 100)),
    (100, 100, 1.0, PhasePlan(0, 100, 0)),
    (50, 100, 0.5, PhasePlan(25, 25, 75)),
    (100, 50, 0.5, PhasePlan(75, 25, 25)),
    (0, 10, 0.5, PhasePlan(0, 0, 10)),
])
def test_phase_plan__epochs_per_phase(e_ssl, e_sl, rho, expected):
    p = phase_plan(e_ssl, e_sl, rho)
    assert p == expected
    assert p.ssl + p.mix == e_ssl and p.mix + p.sl == e_sl


def test_phase_plan__phase_at_and_supervised_epochs():
    p = PhasePlan(2, 1, 2)
    assert [p.phase_at(e) for e in range(5)] == [SSL, SSL, MIX, SL, SL]
    assert [p.sl_epochs_before(e) for e in range(6)] == [0, 0, 0, 1, 2, 3]
    with pytest.raises(IndexError):
        p.phase_at(5)


@pytest.mark.parametrize("epoch, expected", [
    (0.0, 0.0),
    (1.0, 0.5),  # half-way through the 2-epoch warmup
    (2.0, 1.0),  # peak
    (6.0, 0.5),  # cosine half-way between 2 and 10
    (10.0, 0.0),
    (12.0, 0.0),  # past the end stays at min_lr
])
def test_lr_at__warmup_then_cosine(epoch, expected):
    assert math.isclose(lr_at(epoch, 1.0, 2.0, 10.0), expected, abs_tol=1e-12)


def test_lr_at__no_warmup_starts_at_peak():
    assert lr_at(0.0, 3e-4, 0.0, 10.0) == pytest.approx(3e-4)
