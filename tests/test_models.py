"""trainable.models: timm's encoder, the MAE stages and the heads, on the `test` config."""
import pytest
import torch

from trainable.data import generator
from trainable.models import MODEL_CONFIGS, MixViT, select_tokens


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MixViT(MODEL_CONFIGS["test"], [10, 3]).eval()


def test_patchify__unpatchify_inverts_it_and_patches_are_row_major(model):
    x = torch.randn(2, 3, 16, 16)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 4 * 4 * 3)
    assert torch.equal(model.unpatchify(patches), x)
    # patch 1 is the second 4x4 block of the first row, pixels in (row, col, channel) order
    assert torch.equal(patches[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))


def test_random_masking__keeps_a_quarter_and_ids_restore_unshuffles(model):
    ids_keep, mask, ids_restore = model.random_masking(3, 16, 0.75, generator(0), torch.device("cpu"))
    assert ids_keep.shape == (3, 4) and mask.shape == (3, 16)
    assert (mask.sum(1) == 12).all()
    for k, m in zip(ids_keep, mask):
        assert (m[k] == 0).all()  # the kept patches are exactly the unmasked ones
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :4], ids_keep)


def test_forward_encoder__all_tokens_equals_timms_forward_features(model):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.forward_encoder(x), model.encoder.forward_features(x), atol=1e-6)


def test_select_tokens__class_token_first_then_the_kept_patches(model):
    tokens = torch.arange(2 * 17 * 1, dtype=torch.float).view(2, 17, 1).expand(-1, -1, 5)
    ids = torch.tensor([[3, 0], [15, 7]])
    out = select_tokens(tokens, ids)
    assert out[:, :, 0].tolist() == [[0, 4, 1], [17, 33, 25]]


def test_forward_heads__each_task_reads_the_class_token_of_its_own_rows(model):
    tokens = torch.randn(5, 17, MODEL_CONFIGS["test"].embed_dim)
    a, b = model.forward_heads(tokens, [2, 3])
    assert a.shape == (2, 10) and b.shape == (3, 3)
    assert torch.allclose(b, model.heads[1](tokens[2:, 0]))
