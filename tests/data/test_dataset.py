"""Dataset descriptions: dataset.json (nnU-Net v2 and MSD), CSV and JSON lists, splits, errors."""

import json

import numpy as np
import pytest

from medattn.data.dataset import load_dataset, split_cases
from medattn.errors import DataError
from medattn.io import Geometry, write_image

GEOM = Geometry.identity(3)


def _img(path, value=1):
    write_image(np.full((4, 4, 3), value, dtype=np.int16), path, GEOM)
    return path


def make_nnunet(root, n=3, channels=2, with_list=False):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        for c in range(channels):
            _img(root / "imagesTr" / f"c{i}_{c:04d}.nii.gz", c)
        _img(root / "labelsTr" / f"c{i}.nii.gz", 0)
    meta = {"channel_names": {str(c): f"mod{c}" for c in range(channels)},
            "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": n, "file_ending": ".nii.gz"}
    if with_list:
        meta["training"] = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                            for i in range(n)]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root / "dataset.json"


def test_nnunet_v2_folder_discovery_with_channels(tmp_path):
    spec = load_dataset(make_nnunet(tmp_path))
    assert [c.name for c in spec.training] == ["c0", "c1", "c2"]
    assert [p.name for p in spec.training[1].images] == ["c1_0000.nii.gz", "c1_0001.nii.gz"]
    assert spec.training[1].label.name == "c1.nii.gz"
    assert spec.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert spec.channel_names == ["mod0", "mod1"] and spec.num_classes == 3


def test_msd_training_list_resolves_channel_files(tmp_path):
    spec = load_dataset(make_nnunet(tmp_path, with_list=True))
    assert [p.name for p in spec.training[0].images] == ["c0_0000.nii.gz", "c0_0001.nii.gz"]


def test_msd_style_labels_and_folder_argument(tmp_path):
    path = make_nnunet(tmp_path, channels=1, with_list=True)
    meta = json.loads(path.read_text())
    meta["labels"] = {"0": "background", "1": "liver", "2": "tumour"}
    meta["modality"] = meta.pop("channel_names")
    path.write_text(json.dumps(meta))
    spec = load_dataset(tmp_path)  # a folder holding dataset.json
    assert spec.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert len(spec.training) == 3 and len(spec.training[0].images) == 1


def test_csv_list_relative_to_csv(tmp_path):
    (tmp_path / "d").mkdir()
    _img(tmp_path / "d" / "a.nii.gz")
    _img(tmp_path / "d" / "a_seg.nrrd")
    (tmp_path / "list.csv").write_text("name,image,label\nA,d/a.nii.gz,d/a_seg.nrrd\n")
    spec = load_dataset(tmp_path / "list.csv")
    assert spec.training[0].name == "A"
    assert spec.training[0].images == ((tmp_path / "d" / "a.nii.gz").resolve(),)
    assert spec.training[0].label == (tmp_path / "d" / "a_seg.nrrd").resolve()


def test_json_list(tmp_path):
    _img(tmp_path / "x.mha")
    _img(tmp_path / "y.mha")
    (tmp_path / "cases.json").write_text(json.dumps([{"image": "x.mha", "label": "y.mha"}]))
    spec = load_dataset(tmp_path / "cases.json")
    assert spec.training[0].name == "y" and spec.labels == {}


@pytest.mark.parametrize("content,expected", [
    ("[]", "empty dataset"),
    ('{"labels": {"background": 0}, "training": []}', "empty dataset"),
    ('{"labels": {"background": 0}, "training": [{"image": "nope.nii.gz"}]}', "not found"),
    ('{"labels": {"a": 1}, "training": []}', "background"),
    ('{"labels": {"background": 0, "b": 2}, "training": []}', "consecutive"),
    ("{not json", "invalid JSON"),
])
def test_bad_descriptions_name_the_file(tmp_path, content, expected):
    p = tmp_path / "dataset.json"
    p.write_text(content)
    with pytest.raises(DataError) as e:
        load_dataset(p)
    assert str(e.value).startswith(str(p)) and expected in str(e.value)


def test_missing_description(tmp_path):
    with pytest.raises(DataError, match="no such dataset description"):
        load_dataset(tmp_path / "missing.json")


def test_missing_label_file_is_reported(tmp_path):
    path = make_nnunet(tmp_path, channels=1)
    (tmp_path / "labelsTr" / "c1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'c1': no such file .*c1\.nii\.gz"):
        load_dataset(path)


def test_split_is_deterministic_and_disjoint(tmp_path):
    spec = load_dataset(make_nnunet(tmp_path, n=10, channels=1))
    t1, v1 = split_cases(spec.training, 0.2, seed=3)
    _, v2 = split_cases(spec.training, 0.2, seed=3)
    assert [c.name for c in v1] == [c.name for c in v2] and len(v1) == 2
    assert not {c.name for c in t1} & {c.name for c in v1} and len(t1) + len(v1) == 10
    _, v3 = split_cases(spec.training, 0.2, seed=3, val_names=["c4"])
    assert [c.name for c in v3] == ["c4"]
    with pytest.raises(DataError, match="unknown case"):
        split_cases(spec.training, 0.2, seed=3, val_names=["zz"])
