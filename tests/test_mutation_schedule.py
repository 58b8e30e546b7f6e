"""trainable.schedule and trainable.losses: the cases mutation testing (`make mutation`) found unchecked."""
import math

import pytest
import torch

from trainable.losses import mae_loss, mixed_loss
from trainable.schedule import PhasePlan, lr_at


@pytest.mark.parametrize("epoch, expected", [
    (2.0, 1.0),  # the end of warmup: base_lr
    (6.0, 0.1 + 0.9 * 0.5),  # half-way down the cosine: the middle of base_lr and min_lr
    (10.0, 0.1),  # the end: min_lr
])
def test_lr_at__cosine_ends_at_min_lr_not_zero(epoch, expected):
    assert lr_at(epoch, 1.0, 2.0, 10.0, min_lr=0.1) == pytest.approx(expected)


def test_lr_at__a_cosine_shorter_than_one_epoch_still_spans_it():
    # 0.5 epochs of cosine after 1 of warmup: a quarter epoch in is half-way down.
    assert lr_at(1.25, 1.0, 1.0, 1.5) == pytest.approx(0.5)
    assert lr_at(1.5, 1.0, 1.0, 1.5) == pytest.approx(0.0, abs=1e-12)


def test_phase_at__outside_the_plan_names_the_epoch_and_the_plan_length():
    with pytest.raises(IndexError, match="epoch 7 is outside the plan's 5 epochs"):
        PhasePlan(ssl=1, mix=2, sl=2).phase_at(7)


def test_mae_loss__squared_difference_not_sum_when_both_are_nonzero():
    pred = torch.full((1, 2, 2), 3.0)
    target = torch.tensor([[[1.0, 1.0], [3.0, 5.0]]])
    mask = torch.ones(1, 2)
    # patch 0: (3-1)^2 = 4 per value; patch 1: (0 + 4) / 2 = 2; mean over the two masked patches = 3.
    assert mae_loss(pred, target, mask).item() == pytest.approx(3.0)


def test_mae_loss__a_mask_of_the_wrong_shape_names_both_shapes():
    with pytest.raises(AssertionError, match=r"mask \(1, 2\) must be \(B, N\) = \(1, 3\)"):
        mae_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 2))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_mixed_loss__weights_each_loss_not_divides_it(alpha):
    l_ssl, l_sl = torch.tensor(2.0), torch.tensor(5.0)
    assert math.isclose(mixed_loss(l_ssl, l_sl, alpha).item(), alpha * 2.0 + (1 - alpha) * 5.0, rel_tol=1e-6)
