"""trainable.steps: one step function per phase, on the `test` model and random tensors."""
import pytest
import torch
import torch.nn.functional as F

from trainable.data import generator
from trainable.losses import mae_loss, sl_loss
from trainable.models import MODEL_CONFIGS, MixViT, select_tokens
from trainable.steps import mix_step, separate_mix_step, sl_step, ssl_step


def _model_and_batch(tasks=1, b=8):
    torch.manual_seed(0)
    model = MixViT(MODEL_CONFIGS["test"], [10] * tasks)
    x = torch.randn(b * tasks, 3, 16, 16)
    ys = [torch.randint(0, 10, (b,)) for _ in range(tasks)]
    return model, x, ys


def count_encoder_calls(model):
    """The positional arguments of every forward_encoder call from now on, in a list that grows."""
    calls = []
    inner = model.forward_encoder
    model.forward_encoder = lambda *a, **k: calls.append(a) or inner(*a, **k)
    return calls


def test_mix_step__one_encoder_pass_and_loss_is_alpha_weighted_sum_of_its_parts():
    model, x, ys = _model_and_batch()
    calls = count_encoder_calls(model)
    loss, parts = mix_step(model, x, ys, 0.3, 0.75, generator(7))
    assert len(calls) == 1
    assert len(calls[0]) == 1, "the merged step encodes all tokens (no ids_keep)"
    assert loss.item() == pytest.approx(0.3 * parts["loss_ssl"].item() + 0.7 * parts["loss_sl"].item(), rel=1e-6)
    # The parts are the real losses: recompute them from the same encoder output and mask.
    tokens = model.encoder.forward_features(x)
    assert parts["loss_sl"].item() == pytest.approx(sl_loss(model.forward_heads(tokens), ys).item(), rel=1e-5)
    ids_keep, mask, ids_restore = model.random_masking(8, 16, 0.75, generator(7), x.device)
    pred = model.forward_decoder(select_tokens(tokens, ids_keep), ids_restore)
    assert parts["loss_ssl"].item() == pytest.approx(mae_loss(pred, model.patchify(x), mask).item(), rel=1e-5)


def test_separate_mix_step__two_encoder_passes_with_the_same_weighting():
    model, x, ys = _model_and_batch()
    calls = count_encoder_calls(model)
    loss, parts = separate_mix_step(model, x, ys, 0.5, 0.75, generator(0))
    assert len(calls) == 2
    assert loss.item() == pytest.approx(0.5 * parts["loss_ssl"].item() + 0.5 * parts["loss_sl"].item(), rel=1e-6)


def test_ssl_step__encoder_sees_a_quarter_of_the_patch_tokens():
    model, x, _ = _model_and_batch()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    ssl_step(model, x, 0.75, generator(0))
    assert seen == [torch.Size([8, 1 + 16 // 4, 32])]  # class token + 25% of 16 patches


def _params_with_grad(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_steps__gradients_reach_exactly_the_parameters_of_their_phase():
    model, x, ys = _model_and_batch()
    names = {n for n, _ in model.named_parameters()}
    encoder = {n for n in names if n.startswith("encoder.")}
    decoder = {n for n in names if n.startswith(("decoder_", "mask_token"))}
    heads = {n for n in names if n.startswith("heads.")}
    assert encoder | decoder | heads == names

    ssl_step(model, x, 0.75, generator(0))[0].backward()
    assert _params_with_grad(model) == encoder | decoder
    model.zero_grad(set_to_none=True)
    sl_step(model, x, ys)[0].backward()
    assert _params_with_grad(model) == encoder | heads
    model.zero_grad(set_to_none=True)
    mix_step(model, x, ys, 0.5, 0.75, generator(0))[0].backward()
    assert _params_with_grad(model) == names


def test_multi_task_step__each_head_sees_only_its_own_rows():
    model, x, ys = _model_and_batch(tasks=2, b=4)  # rows 0-3: task 0, rows 4-7: task 1
    cls = model.forward_encoder(x)[:, 0]
    logits = model.forward_heads(model.forward_encoder(x), [4, 4])
    assert torch.allclose(logits[0], model.heads[0](cls[:4])) and torch.allclose(logits[1], model.heads[1](cls[4:]))
    # Changing task 0's images changes only task 0's logits (each image is encoded on its own).
    other = x.clone()
    other[:4] = torch.randn(4, 3, 16, 16)
    changed = model.forward_heads(model.forward_encoder(other), [4, 4])
    assert not torch.allclose(changed[0], logits[0]) and torch.allclose(changed[1], logits[1])
    # The step's loss is the mean over tasks of each head's cross-entropy on its own rows.
    expected = (F.cross_entropy(model.heads[0](cls[:4]), ys[0]) + F.cross_entropy(model.heads[1](cls[4:]), ys[1])) / 2
    assert sl_step(model, x, ys).loss.item() == pytest.approx(expected.item(), rel=1e-6)
