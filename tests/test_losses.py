"""trainable.losses on hand-computed values."""
import pytest
import torch

from trainable.losses import mae_loss, mixed_loss, sl_loss


def test_mae_loss__mean_squared_error_over_masked_patches_only():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third patch is visible: its error does not count
    assert mae_loss(pred, target, mask).item() == pytest.approx((1 + 4) / 2)


def test_sl_loss__cross_entropy_averaged_over_tasks():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[10.0, 0.0, 0.0]])
    ya, yb = torch.tensor([0]), torch.tensor([0])
    expected = (torch.log(torch.tensor(2.0)) + torch.nn.functional.cross_entropy(b, yb)) / 2
    assert sl_loss([a, b], [ya, yb]).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("alpha, expected", [(0.0, 3.0), (1.0, 1.0), (0.25, 0.25 * 1 + 0.75 * 3)])
def test_mixed_loss__eq3_table(alpha, expected):
    assert mixed_loss(torch.tensor(1.0), torch.tensor(3.0), alpha).item() == pytest.approx(expected)


def test_mae_loss__shape_mismatch_explains_itself():
    with pytest.raises(AssertionError, match="pred .* and target .* differ"):
        mae_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 4), torch.ones(1, 3))
