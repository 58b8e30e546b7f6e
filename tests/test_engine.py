"""trainable.engine: the epoch loop, on the `test` model and bundled digits."""
import io
import os

import pytest
import torch

from conftest import small_config
from test_steps import count_encoder_calls
from trainable.config import optim_settings
from trainable.cost import step_flops
from trainable.data import generator
from trainable.engine import Engine, NonFiniteLossError
from trainable.schedule import lr_at

TIMING_KEYS = {"epoch_time_s", "train_time_s", "images_per_s"}


def _strip_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def _run(engine, epochs=None):
    out = []
    while not engine.done and (epochs is None or len(out) < epochs):
        out.append(engine.run_epoch())
    return out


# --- the engine -----------------------------------------------------------------------------------

def test_engine__ssl_phase_leaves_heads_and_sl_phase_leaves_decoder_untouched(digits_data):
    eng = Engine(small_config(e_ssl=1, e_sl=1, rho=0.0), data=digits_data)  # plan: 1 SSL, 1 SL
    heads0 = {k: v.clone() for k, v in eng.model.heads.state_dict().items()}
    enc0 = eng.model.encoder.patch_embed.proj.weight.clone()
    eng.run_epoch()
    assert all(torch.equal(v, eng.model.heads.state_dict()[k]) for k, v in heads0.items())
    assert not torch.equal(enc0, eng.model.encoder.patch_embed.proj.weight)
    dec1 = [p.clone() for p in eng.model.decoder_parameters()]
    eng.run_epoch()
    assert all(torch.equal(a, b) for a, b in zip(dec1, eng.model.decoder_parameters()))
    assert not all(torch.equal(v, eng.model.heads.state_dict()[k]) for k, v in heads0.items())


def test_engine__metrics_per_phase(digits_data):
    metrics = _run(Engine(small_config(), data=digits_data))  # plan: 1 SSL, 1 mix, 1 SL
    assert [m["phase"] for m in metrics] == ["ssl", "mix", "sl"]
    assert [m["sl_epochs"] for m in metrics] == [0, 1, 2]
    assert "val_acc" not in metrics[0] and "loss_sl" not in metrics[0]
    assert {"loss_ssl", "loss_sl", "val_acc", "val_acc/digits"} <= set(metrics[1])
    assert "loss_ssl" not in metrics[2] and 0.0 <= metrics[2]["val_acc"] <= 1.0
    assert metrics[-1]["done"] and not metrics[0]["done"]
    assert metrics[0]["compute_tflop"] < metrics[1]["compute_tflop"] < metrics[2]["compute_tflop"]
    assert metrics[2]["train_time_s"] == pytest.approx(sum(m["epoch_time_s"] for m in metrics))


def test_engine__same_seed_same_metrics_and_another_seed_differs(digits_data):
    a = _strip_timing(_run(Engine(small_config(), data=digits_data)))
    b = _strip_timing(_run(Engine(small_config(), data=digits_data)))
    c = _strip_timing(_run(Engine(small_config(seed=1), data=digits_data)))
    assert a == b
    assert a[0]["loss_ssl"] != c[0]["loss_ssl"]


def _assert_resumes_exactly(cfg, data, stop_after):
    """Saving after `stop_after` epochs, loading into a fresh engine and training on gives the uninterrupted run,
    bit for bit (metrics and weights)."""
    full_engine = Engine(cfg, data=data)
    full = _strip_timing(_run(full_engine))
    first = Engine(cfg, data=data)
    _run(first, stop_after)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = Engine(cfg, data=data)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    rest = _strip_timing(_run(resumed))
    assert rest == full[stop_after:]
    for k, v in full_engine.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.parametrize("stop_after", [1, 3])  # inside the SSL phase; after the mix phase (optimiser carried over)
def test_engine__save_load_continue_gives_exactly_the_uninterrupted_run(digits_data, stop_after):
    _assert_resumes_exactly(small_config(e_ssl=3, e_sl=3, rho=0.34), digits_data, stop_after)  # 2 SSL, 1 mix, 2 SL


def test_engine__compute_is_counted_at_the_configs_mask_ratio(digits_data):
    engine = Engine(small_config(mask_ratio=0.5), data=digits_data)
    m = engine.run_epoch()  # an SSL-only epoch
    per_image = step_flops(engine.model_cfg, (10,), "ssl", "merged", 0.5)
    assert m["compute_tflop"] == pytest.approx(m["images_ssl"] * per_image / 1e12, rel=1e-12)
    assert per_image != step_flops(engine.model_cfg, (10,), "ssl", "merged", 0.75)


def test_engine__load_state_dict_rejects_another_config(digits_data):
    state = Engine(small_config(), data=digits_data).state_dict()
    with pytest.raises(ValueError, match=r"different config.*alpha"):
        Engine(small_config(alpha=0.9), data=digits_data).load_state_dict(state)


def test_engine__ssl_only_phase_does_not_depend_on_alpha_rho_lam_or_e_sl(digits_data):
    a = Engine(small_config(e_ssl=4, e_sl=4, rho=0.25, alpha=0.5, lam=0.5), data=digits_data)  # 3 SSL-only
    b = Engine(small_config(e_ssl=4, e_sl=6, rho=0.5, alpha=0.9, lam=0.1), data=digits_data)  # 2 SSL-only
    assert _strip_timing(_run(a, 2)) == _strip_timing(_run(b, 2))
    for k, v in a.model.state_dict().items():
        if not k.startswith("heads."):
            assert torch.equal(v, b.model.state_dict()[k]), k
    _assert_same_optimizer_state(a.optimizer, b.optimizer)


def _assert_same_optimizer_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]
    for i, st in sa["state"].items():
        assert st.keys() == sb["state"][i].keys()
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][i][k])), (i, k)
    assert [{k: v for k, v in g.items() if k != "params"} for g in sa["param_groups"]] == \
           [{k: v for k, v in g.items() if k != "params"} for g in sb["param_groups"]]


def test_engine__sl_on_bundled_digits_is_well_above_chance(digits_data):
    eng = Engine(small_config(method="sl", e_sl=8, batch_size=32, sl_lr=1.6e-2), data=digits_data)
    _run(eng)
    assert eng.evaluate("test")["acc"] > 0.35  # chance is 0.10


def test_engine__no_weight_decay_on_biases_norms_position_embeddings_and_tokens(digits_data):
    eng = Engine(small_config(), data=digits_data)
    eng._ensure_optimizer("ssl")
    names = {id(p): n for n, p in eng.model.named_parameters()}
    no_decay = {names[id(p)] for g in eng.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"encoder.pos_embed", "encoder.cls_token", "decoder_pos_embed", "mask_token"} <= no_decay
    assert "encoder.blocks.0.attn.qkv.bias" in no_decay and "encoder.norm.weight" in no_decay
    assert "encoder.blocks.0.attn.qkv.weight" not in no_decay and "heads.0.weight" not in no_decay


def test_engine__speed_switches_change_kernels_not_results(digits_data):
    on = Engine(small_config(), data=digits_data)
    off = Engine(small_config(sdpa="off", fused_adamw="on"), data=digits_data)
    attn = lambda e: [m.fused_attn for m in e.model.modules() if hasattr(m, "fused_attn")]  # noqa: E731
    assert attn(on) and all(attn(on)) and not any(attn(off))
    assert not on.run.amp and not on.run.fused_adamw and off.run.fused_adamw  # auto: off on the CPU
    a, b = on.run_epoch(), off.run_epoch()
    assert a["loss_ssl"] == pytest.approx(b["loss_ssl"], rel=1e-4)


def test_engine__non_finite_loss_stops_with_a_clear_error(digits_data):
    eng = Engine(small_config(method="sl", e_sl=2, sl_lr=1e30, sl_warmup=0.0), data=digits_data)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss in epoch 1 \(sl phase\).*lower it"):
        _run(eng)


def test_engine__multi_task_reports_accuracy_per_task_and_their_mean():
    cfg = small_config(datasets=("digits", "mnist"), method="sl", e_sl=1)
    m = Engine(cfg).run_epoch()
    assert m["val_acc"] == pytest.approx((m["val_acc/digits"] + m["val_acc/mnist"]) / 2)


def test_engine__different_ssl_dataset_mixes_images_with_lambda_and_lambda_matters():
    cfg = small_config(ssl_dataset="mnist", lam=1.0, rho=1.0, e_ssl=1, e_sl=1)
    pure = Engine(cfg)
    assert not pure.data.ssl_is_sl
    m_pure = pure.run_epoch()
    m_half = Engine(cfg.replace(lam=0.5), data=pure.data).run_epoch()
    assert m_pure["phase"] == m_half["phase"] == "mix"
    assert m_pure["loss_sl"] != m_half["loss_sl"]  # the mixed-in SSL images change what the classifier sees


def test_engine__reconstruct_keeps_visible_patches_and_learns_the_masked_ones(digits_data):
    eng = Engine(small_config(method="ssl_sl", e_ssl=6, e_sl=1, batch_size=32, ssl_lr=2.4e-3), data=digits_data)
    before = eng.reconstruct(16)
    _run(eng, 6)  # the SSL epochs
    orig, masked, recon = eng.reconstruct(16)
    assert orig.shape == masked.shape == recon.shape == (16, 3, 16, 16)
    visible = masked != 0.5  # masked patches are zero in [-1, 1], i.e. 0.5 in [0, 1]
    assert torch.equal(recon[visible], orig[visible])
    err = lambda r: (r - orig)[~visible].pow(2).mean().item()  # noqa: E731
    # A trained decoder predicts the masked patches far better than the untrained one or the grey mask.
    assert err(recon) < 0.5 * err(before[2]) and err(recon) < 0.5 * err(masked)


def test_engine__mix_optim_ssl_continues_the_ssl_optimiser_and_schedule_through_the_mix_phase(digits_data):
    cfg = small_config(e_ssl=3, e_sl=3, rho=0.34)  # plan: 2 SSL, 1 mix, 2 SL
    ssl_mix, sl_mix = Engine(cfg.replace(mix_optim="ssl"), data=digits_data), Engine(cfg, data=digits_data)
    _run(ssl_mix, 2), _run(sl_mix, 2)
    opt = ssl_mix.optimizer
    m_ssl, m_sl = ssl_mix.run_epoch(), sl_mix.run_epoch()
    assert m_ssl["phase"] == m_sl["phase"] == "mix"
    assert ssl_mix.optimizer is opt and ssl_mix.opt_kind == "ssl"  # the SSL optimiser's state carries on
    assert sl_mix.opt_kind == "sl"
    n = len(digits_data.sl_batches(cfg.batch_size, generator(0)))
    s = optim_settings(cfg.replace(mix_optim="ssl"), "ssl")
    assert m_ssl["lr"] == pytest.approx(lr_at(2 + (n - 1) / n, s.lr, s.warmup_epochs, s.total_epochs))
    t = optim_settings(cfg, "sl")
    assert m_sl["lr"] == pytest.approx(lr_at((n - 1) / n, t.lr, t.warmup_epochs, t.total_epochs))
    assert ssl_mix.run_epoch()["phase"] == "sl" and ssl_mix.opt_kind == "sl"


def test_engine__separate_mix_step_encodes_twice_per_mix_batch_and_trains_differently(digits_data):
    cfg = small_config(e_ssl=1, e_sl=1, rho=1.0)  # plan: one mix epoch
    merged, separate = Engine(cfg, data=digits_data), Engine(cfg.replace(mix_step="separate"), data=digits_data)
    calls = count_encoder_calls(separate.model)
    m_sep, m_mer = separate.run_epoch(), merged.run_epoch()
    steps = len(digits_data.sl_batches(cfg.batch_size, generator(0)))
    assert len(calls) == 2 * steps
    assert m_sep["compute_tflop"] > m_mer["compute_tflop"]
    assert m_sep["loss_ssl"] != m_mer["loss_ssl"]


# --- the CUDA defaults and the CPU -------------------------------------------------------------------

# Read-only queries and the seeding every torch.manual_seed does (queued until CUDA starts, which never happens
# here): anything else in torch.cuda touches a device. _lazy_init is where every CUDA tensor or kernel starts it.
CUDA_ALLOWED = {"is_available", "is_initialized", "device_count", "manual_seed", "manual_seed_all", "seed", "seed_all"}


def _forbid_cuda(monkeypatch):
    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} called with the device on the CPU")
        return call

    for name in dir(torch.cuda):
        obj = getattr(torch.cuda, name)
        public_function = callable(obj) and not isinstance(obj, type) and not name.startswith("_")
        if (public_function and name not in CUDA_ALLOWED) or name == "_lazy_init":
            monkeypatch.setattr(torch.cuda, name, refuse(name))


def _process_numerics():
    return (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark)


def test_engine__nothing_calls_cuda_when_the_device_is_the_cpu(digits_data, monkeypatch):
    before = _process_numerics()
    _forbid_cuda(monkeypatch)
    cfg = small_config(deterministic=True)  # plan: 1 SSL, 1 mix, 1 SL
    engine = Engine(cfg, data=digits_data)
    _run(engine)
    engine.evaluate("test"), engine.reconstruct(2)
    Engine(cfg, data=digits_data).load_state_dict(engine.state_dict())
    assert _process_numerics() == before  # the CUDA settings (deterministic kernels, TF32) stay off the CPU


def test_engine__deterministic_on_the_cpu_gives_the_same_run(digits_data):
    cfg = small_config(e_ssl=1, e_sl=1, rho=1.0)  # one mix epoch
    plain, deterministic = Engine(cfg, data=digits_data), Engine(cfg.replace(deterministic=True), data=digits_data)
    assert _strip_timing(_run(plain)) == _strip_timing(_run(deterministic))
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, deterministic.model.state_dict()[k]), k


def test_set_cuda_numerics__deterministic_turns_on_pytorch_s_deterministic_kernels_and_cublas_condition(monkeypatch):
    """What --deterministic does on CUDA (engines call it there only): tested here as a function on any machine."""
    from trainable.engine import _set_cuda_numerics
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _process_numerics()
    try:
        _set_cuda_numerics(True)
        deterministic = _process_numerics()
        _set_cuda_numerics(False)
        plain = _process_numerics()
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_float32_matmul_precision(before[2])
        torch.backends.cudnn.benchmark = before[3]
    assert deterministic == (True, ":4096:8", "high", False)
    assert plain[0] is False and plain[2] == "high"  # the next trial on a reused actor may be plain


@pytest.mark.slow  # torch.compile takes minutes on a CPU
def test_engine__bf16_autocast_and_compile_the_cuda_defaults_train_and_resume_exactly_on_the_cpu(digits_data,
                                                                                                   monkeypatch):
    _forbid_cuda(monkeypatch)  # and still nothing of CUDA runs
    cfg = small_config(amp="on", compile="on")  # plan: 1 SSL, 1 mix, 1 SL
    engine = Engine(cfg, data=digits_data)
    assert engine.run.amp and engine.run.compile
    assert engine.model.forward_encoder is not engine._encoder_fwd  # training goes through the compiled encoder
    _assert_resumes_exactly(cfg, digits_data, stop_after=1)
