"""The handcrafted encoder's values on hand-made patches and against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import rgb2hed, rgb2hsv

from medattn.data.handcrafted import FEATURE_NAMES, HandcraftedEncoder

ENC = HandcraftedEncoder()


def _features(images: np.ndarray) -> list[dict[str, float]]:
    """``[B, H, W, 3]`` uint8 → one name → value dict per image."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    out = ENC(x)
    assert out.shape == (len(images), ENC.dim) and out.dtype == torch.float32
    return [dict(zip(FEATURE_NAMES, row.tolist(), strict=True)) for row in out]


def test_names_and_dimension():
    assert ENC.dim == len(FEATURE_NAMES) == 70 and len(set(FEATURE_NAMES)) == 70
    assert ENC.name == "handcrafted" and ENC.version


def test_a_uniform_patch_has_its_colour_and_no_texture():
    rgb = (204, 102, 153)  # (0.8, 0.4, 0.6): hue 330°, saturation 0.5, value 0.8
    f = _features(np.full((1, 64, 64, 3), rgb, np.uint8))[0]
    for c, v in zip("rgb", rgb, strict=True):
        for stat in ("mean", "p10", "p50", "p90"):
            assert f[f"rgb_{c}_{stat}"] == pytest.approx(v / 255, abs=1e-6)
        assert f[f"rgb_{c}_std"] == pytest.approx(0, abs=1e-6)
        assert f[f"od_{c}_mean"] == pytest.approx(-math.log10((v + 1) / 256), abs=1e-6)
    assert (f["hue_cos"], f["hue_sin"]) == pytest.approx((math.cos(math.radians(330)), math.sin(math.radians(330))),
                                                         abs=1e-5)
    assert (f["sat_mean"], f["val_mean"], f["sat_p90"], f["val_std"]) == pytest.approx((0.5, 0.8, 0.5, 0), abs=1e-6)
    hed = rgb2hed(np.full((4, 4, 3), rgb, np.uint8))[0, 0]
    assert (f["hema_mean"], f["eosin_p50"], f["dab_mean"]) == pytest.approx(tuple(hed), abs=1e-6)
    texture = [n for n in FEATURE_NAMES if n.startswith(("grad_", "edge_", "laplacian", "contrast_", "corr_",
                                                          "gabor_", "grey_entropy", "hema_std", "eosin_std"))]
    assert len(texture) == 18
    for name in texture:
        assert f[name] == pytest.approx(0.0, abs=1e-6), name
    assert f["lbp_0"] == 1.0 and sum(f[f"lbp_{k}"] for k in range(9)) == pytest.approx(1.0)


def test_colour_statistics_match_scikit_image_on_a_real_ihc_image():
    img = data.immunohistochemistry()[100:228, 200:328]  # 128 × 128 RGB
    f = _features(img[None])[0]
    hed, hsv = rgb2hed(img), rgb2hsv(img)
    assert f["hema_mean"] == pytest.approx(hed[..., 0].mean(), rel=1e-4)
    assert f["eosin_std"] == pytest.approx(hed[..., 1].std(), rel=1e-3)
    assert f["dab_mean"] == pytest.approx(hed[..., 2].mean(), rel=1e-4)
    assert f["sat_mean"] == pytest.approx(hsv[..., 1].mean(), rel=1e-4)
    for c, name in enumerate("rgb"):  # RGB percentiles are exact nearest-rank percentiles
        for q in (10, 50, 90):
            expected = np.sort(img[..., c].ravel())[round(q / 100 * (img[..., c].size - 1))] / 255
            assert f[f"rgb_{name}_p{q}"] == pytest.approx(expected, abs=1e-6)
        assert f[f"rgb_{name}_std"] == pytest.approx(img[..., c].std() / 255, rel=1e-4)
    assert 0 < f["grey_entropy"] <= 4 and f["corr_d1"] > f["corr_d4"] > 0


def test_texture_values_order_patches_as_expected():
    yy, xx = np.mgrid[:64, :64]
    smooth = np.repeat(((xx + yy) * 2).astype(np.uint8)[..., None], 3, axis=2)  # a gentle ramp
    vertical = np.repeat((((xx // 4) % 2) * 200 + 20).astype(np.uint8)[..., None], 3, axis=2)  # period 8 along x
    horizontal = vertical.transpose(1, 0, 2).copy()
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    fs, fv, fh, fn = _features(np.stack([smooth, vertical, horizontal, noise]))
    assert fv["gabor_0"] > 5 * fv["gabor_90"] and fh["gabor_90"] > 5 * fh["gabor_0"]
    assert fv["gabor_0"] == pytest.approx(fh["gabor_90"], rel=1e-5)
    assert fn["contrast_d1"] > fv["contrast_d1"] > fs["contrast_d1"] > 0
    assert fs["corr_d1"] > 0.99 and abs(fn["corr_d1"]) < 0.1
    assert fv["edge_density"] > fs["edge_density"] == 0.0
    assert fn["lbp_4"] > fs["lbp_4"]


def test_batching_does_not_mix_patches():
    imgs = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    imgs[2] = 180
    together = _features(imgs)
    for i in range(5):
        alone = _features(imgs[i: i + 1])[0]
        assert together[i] == pytest.approx(alone, rel=1e-5, abs=1e-6)
