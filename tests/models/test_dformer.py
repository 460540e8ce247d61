"""D-Former: shapes, padding masking, gradients, determinism, state dicts, config errors, kernel use."""

from __future__ import annotations

import medattn.kernels.dispatch as dispatch
import pytest
import torch
from medattn.kernels import Partition

from medattn.errors import ConfigError
from medattn.models import create_model
from medattn.models.dformer import DFormer, parameter_count
from medattn.models.dformer_blocks import ScopeAttention


def tiny(**kwargs) -> DFormer:
    torch.manual_seed(0)
    return DFormer(preset="tiny", **kwargs)


@pytest.mark.parametrize("shape", [(13, 10, 9), (8, 8, 8), (5, 17, 3)])
def test_output_shape_for_odd_input_sizes(shape):
    model = tiny(in_channels=2, out_channels=3).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 2, *shape))
    assert y.shape == (2, 3, *shape)
    assert torch.isfinite(y).all()


def test_padding_does_not_change_real_voxels():
    """More internal padding (16 or 32 instead of 8) leaves the logits on real voxels unchanged."""
    model = tiny().eval()
    x = torch.randn(1, 1, 13, 10, 9)
    with torch.no_grad():
        ref = model(x)
        for multiple in (16, 32):
            model.pad_multiple = multiple
            torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert ref.abs().max() > 0.1  # not trivially zero


def test_padded_tokens_are_never_attended_to():
    """Changing a padded token's features changes nothing on real tokens (attention is cropped)."""
    torch.manual_seed(0)
    attn = ScopeAttention(32, 2, (4, 4, 4), (0, 0, 0))
    x = torch.randn(1, 6, 6, 6, 32)
    a = attn(x, (5, 4, 6))
    x[:, 5:] = 100.0
    x[:, :, 4:] = -50.0
    b = attn(x, (5, 4, 6))
    torch.testing.assert_close(a[:, :5, :4], b[:, :5, :4])
    assert a[:, 5:].abs().max() == 0 and a[:, :, 4:].abs().max() == 0


def test_dilated_scope_spans_the_feature_map():
    """Dilation 0 = ceil(n / window): one dilated group of window tokens per axis covers the map."""
    attn = ScopeAttention(32, 2, (4, 4, 4), (0, 0, 0))
    assert attn.partition((16, 9, 4)) == Partition((4, 4, 4), dilation=(4, 3, 1))
    assert ScopeAttention(32, 2, (4, 4, 4), None).partition((16, 9, 4)) == Partition((4, 4, 4))
    # a token attends to a far token of its group: perturbing token (12, 0, 0) moves token (0, 0, 0)
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4, 4, 32)
    a = attn(x, (16, 4, 4))
    x[:, 12, 0, 0] += 5.0
    assert (attn(x, (16, 4, 4))[0, 0, 0, 0] - a[0, 0, 0, 0]).abs().max() > 1e-4


def test_gradients_reach_every_parameter_including_bias_tables():
    model = tiny()
    model(torch.randn(1, 1, 12, 11, 10)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    tables = [n for n, _ in model.named_parameters() if n.endswith("bias_table")]
    assert len(tables) == 10  # encoder 2 + 2 + 2 blocks, decoder 2 + 2 blocks


def test_eval_is_deterministic_and_forward_changes_no_state():
    model = tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 9, 12, 8)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    model(x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_state_dict_round_trip(tmp_path):
    model = tiny(out_channels=3).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(123)
    restored = DFormer(preset="tiny", out_channels=3).eval()
    x = torch.randn(1, 1, 8, 9, 10)
    with torch.no_grad():
        assert not torch.equal(restored(x), model(x))
        restored.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
        assert torch.equal(restored(x), model(x))


def test_presets_and_parameter_counts():
    assert parameter_count(tiny()) == 863_674
    base = create_model("dformer", preset="base")
    assert parameter_count(base) == 44_583_134  # the paper's ~44 M
    assert base.depths == (2, 2, 6, 2) and base.size_multiple == 16


@pytest.mark.parametrize("kwargs, message", [
    ({"heads": (3, 4, 8)}, "heads[0]=3 does not divide the stage-0 dim 32"),
    ({"heads": (4, 4, 8)}, "head size 32/4=8 is not supported"),
    ({"heads": (2, 4)}, "one entry per stage"),
    ({"window": 0}, "window=0"),
    ({"depths": (2, 0, 2)}, "depths=[2, 0, 2]"),
    ({"embed_dim": 33}, "embed_dim=33"),
    ({"spatial_dims": 2}, "3-D only"),
    ({"preset": "huge"}, "preset='huge'"),
    ({"patch": 3}, "patch=3"),
])
def test_bad_config_is_a_one_line_config_error(kwargs, message):
    with pytest.raises(ConfigError, match="model 'dformer'") as info:
        create_model("dformer", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_attention_goes_through_medattn_kernels(monkeypatch):
    """Every block calls medattn.kernels.blocked_attention3d with its local or dilated partition."""
    calls: list[Partition] = []
    real = dispatch.blocked_attention3d

    def counting(q, k, v, partition, bias_table=None, **kw):
        calls.append(partition)
        return real(q, k, v, partition, bias_table, **kw)

    monkeypatch.setattr(dispatch, "blocked_attention3d", counting)
    model = tiny().eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 16, 16, 16))
    assert len(calls) == 10  # 6 encoder + 4 decoder blocks
    assert sum(p.dilation is None for p in calls) == 5
    # stage 0 is 8^3 tokens: dilated groups of 4 at stride 2; stage 2 is 2^3 tokens: stride 1
    assert Partition((4, 4, 4), dilation=(2, 2, 2)) in calls and Partition((4, 4, 4), dilation=(1, 1, 1)) in calls


@pytest.mark.slow
def test_medattn_train_with_the_tiny_config_learns_the_phantoms(tmp_path):
    """``medattn train dformer_tiny`` on synthetic phantoms reaches validation Dice >= 0.7 in 5 epochs
    (constant lr: with poly decay over only 5 epochs the lr is too small too soon)."""
    import subprocess
    import sys

    from medattn.data.synth import write_synthetic_dataset
    from medattn.engine.checkpoint import load_checkpoint
    from medattn.engine.trainer import read_log

    ds = write_synthetic_dataset(tmp_path / "data", spatial_dims=3, n_train=8, n_test=0, seed=0)
    cmd = [sys.executable, "-m", "medattn", "train", "dformer_tiny", "--no-progress",
           "--set", f"data.dataset={ds}", "--set", f"output_dir={tmp_path / 'run'}",
           "--set", "data.num_workers=0", "--set", "train.epochs=5", "--set", "train.val_every=5",
           "--set", "train.scheduler=constant"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    log = read_log(tmp_path / "run")
    assert log[-1]["val_dice"] >= 0.7, log
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert ckpt["model"] == {"name": "dformer",
                             "kwargs": {"preset": "tiny", "spatial_dims": 3, "in_channels": 1, "out_channels": 3}}
