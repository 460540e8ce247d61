"""Encoder factory and the CNN encoder with a weights file written by the test (never downloaded)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from monai.networks.nets import ResNet

from medattn.config.mil_schema import EncoderConfig
from medattn.data.encoders import IMAGENET_MEAN, IMAGENET_STD, CnnEncoder, create_encoder
from medattn.errors import ConfigError


def _monai_resnet10(feed_forward: bool) -> ResNet:
    torch.manual_seed(0)
    return ResNet("basic", [1, 1, 1, 1], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, conv1_t_size=7,
                  conv1_t_stride=2, feed_forward=feed_forward, num_classes=5, bias_downsample=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A trained-classifier-style checkpoint: {"state_dict": ...} including the fc head, BN stats set."""
    net = _monai_resnet10(True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet10.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    return path, net


def test_cnn_encoder_gives_the_pooled_features_of_the_saved_network(weights):
    path, net = weights
    enc = create_encoder(EncoderConfig(name="cnn", weights=str(path), kwargs={"network": "resnet10"}))
    assert isinstance(enc, CnnEncoder) and enc.dim == 512 and not enc.training
    x = torch.rand(3, 3, 64, 64)
    feats = enc(x)
    assert feats.shape == (3, 512) and feats.dtype == torch.float32
    # the same network without its head on ImageNet-normalised input, computed independently
    ref_net = _monai_resnet10(False)
    ref_net.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref_net.eval()((x - mean) / std)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert enc.version == f"resnet10-{sha[:16]}"
    assert enc.describe() == {"name": "cnn", "version": enc.version, "weights": str(path), "dim": 512,
                              "kwargs": {"network": "resnet10", "imagenet_norm": True, "input_size": None}}


def test_cnn_encoder_options_resize_and_no_normalisation(weights):
    path, _ = weights
    enc = create_encoder(EncoderConfig(name="cnn", weights=str(path),
                                       kwargs={"network": "resnet10", "imagenet_norm": False, "input_size": 32}))
    x = torch.rand(2, 3, 96, 96)
    small = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(enc(x), enc(small))
    plain = create_encoder(EncoderConfig(name="cnn", weights=str(path), kwargs={"network": "resnet10"}))
    assert not torch.allclose(enc(small), plain(small))  # normalisation changes the features


def test_weight_file_problems_are_config_errors_naming_the_file(weights, tmp_path):
    path, _ = weights
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ConfigError, match=r"not found .*never downloaded") as err:
        create_encoder(EncoderConfig(name="cnn", weights=str(missing)))
    assert str(err.value).startswith(str(missing))
    with pytest.raises(ConfigError, match=r"encoder\.weights: the cnn encoder needs a local weights file"):
        create_encoder(EncoderConfig(name="cnn"))
    with pytest.raises(ConfigError, match=r"do not fit a MONAI resnet18 .*missing: .*layer1\.1") as err:
        create_encoder(EncoderConfig(name="cnn", weights=str(path), kwargs={"network": "resnet18"}))
    assert str(err.value).startswith(str(path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read encoder weights"):
        create_encoder(EncoderConfig(name="cnn", weights=str(junk)))
    not_tensors = tmp_path / "meta.pt"
    torch.save({"lr": 0.1, "epochs": 3}, not_tensors)
    with pytest.raises(ConfigError, match="expected a state_dict"):
        create_encoder(EncoderConfig(name="cnn", weights=str(not_tensors)))


def test_unsafe_pickles_are_refused(tmp_path):
    """torch.load(weights_only=True): a pickle that would build arbitrary objects is not loaded."""
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": ConfigError("x")}, evil)
    with pytest.raises(ConfigError, match="cannot read encoder weights"):
        create_encoder(EncoderConfig(name="cnn", weights=str(evil), kwargs={"network": "resnet10"}))


def test_factory_names_and_options():
    enc = create_encoder(EncoderConfig())
    assert (enc.name, enc.dim, enc.describe()["weights"]) == ("handcrafted", 70, None)
    with pytest.raises(ConfigError, match="unknown encoder 'vit'"):
        create_encoder(EncoderConfig(name="vit"))
    with pytest.raises(ConfigError, match="takes no options, got depth"):
        create_encoder(EncoderConfig(kwargs={"depth": 3}))
    with pytest.raises(ConfigError, match="unknown option\\(s\\) pretrained"):
        create_encoder(EncoderConfig(name="cnn", weights="w.pt", kwargs={"pretrained": True}))
    with pytest.raises(ConfigError, match="unknown network 'vgg16'"):
        create_encoder(EncoderConfig(name="cnn", weights="w.pt", kwargs={"network": "vgg16"}))
