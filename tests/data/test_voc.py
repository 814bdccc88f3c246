"""VOC 2007 and folder+CSV multi-label loading from tiny fixtures written into tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sskt.data.voc import VOC_CLASSES, load_multilabel_csv, load_voc2007, read_voc_labels
from sskt.errors import SSKTError

XML = """<annotation>
  <folder>VOC2007</folder>
  <filename>{id}.jpg</filename>
  <source><database>The VOC2007 Database</database></source>
  <size><width>40</width><height>30</height><depth>3</depth></size>
  <segmented>0</segmented>
{objects}</annotation>
"""
OBJ = """  <object>
    <name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox>
  </object>
"""
# id -> [(class, difficult)]
ANNOTATIONS = {
    "000005": [("dog", 0), ("person", 1), ("person", 0)],  # a difficult person beside an easy one
    "000007": [("cat", 1), ("chair", 0)],                   # the only cat is difficult -> ignored
    "000009": [("car", 0)],
}


def _make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for k, (image_id, objs) in enumerate(ANNOTATIONS.items()):
        objects = "".join(OBJ.format(name=n, d=d) for n, d in objs)
        (voc / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, objects=objects))
        Image.new("RGB", (40, 30), (50 * k, 100, 200)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "ImageSets/Main/trainval.txt").write_text("000005\n000007\n")
    (voc / "ImageSets/Main/test.txt").write_text("000009\n")
    return voc


def _col(name: str) -> int:
    return VOC_CLASSES.index(name)


def test_voc_targets_and_difficult_mask(tmp_path: Path) -> None:
    _make_voc(tmp_path)
    s = load_voc2007(tmp_path, "trainval", size=16)
    assert s.ids == ["000005", "000007"]
    assert s.images.shape == (2, 3, 16, 16) and s.images.dtype == torch.uint8
    assert s.targets.shape == (2, 20) and s.classes == list(VOC_CLASSES)
    # image 000005: dog and person positive (an easy person exists), nothing ignored
    assert {VOC_CLASSES[c] for c in s.targets[0].nonzero().flatten().tolist()} == {"dog", "person"}
    assert not s.ignore[0].any()
    # image 000007: chair positive; cat only difficult -> ignored, not positive
    assert s.targets[1, _col("chair")] == 1 and s.targets[1, _col("cat")] == 0
    assert s.ignore[1].nonzero().flatten().tolist() == [_col("cat")]
    # the colour survives decoding + resizing (JPEG is lossy, so approximately)
    assert abs(s.images[0, 2].float().mean().item() - 200) < 4


def test_voc_root_can_be_any_level_and_test_split(tmp_path: Path) -> None:
    voc = _make_voc(tmp_path)
    for root in (tmp_path, voc.parent, voc):
        ids, targets, _ = read_voc_labels(root, "test")
        assert ids == ["000009"] and targets[0].nonzero().flatten().tolist() == [_col("car")]


def test_voc_corrupt_image_names_the_file(tmp_path: Path) -> None:
    voc = _make_voc(tmp_path)
    (voc / "JPEGImages" / "000007.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SSKTError, match="000007.jpg"):
        load_voc2007(tmp_path, "trainval", size=16, workers=2)


def test_voc_unknown_split_is_a_clear_error(tmp_path: Path) -> None:
    _make_voc(tmp_path)
    with pytest.raises(SSKTError, match="trainval"):
        read_voc_labels(tmp_path, "training")


def test_csv_multilabel_both_separators(tmp_path: Path) -> None:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(img_dir / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\na.png,dog cat\nb.jpg,person;dog\nc.png,\n")
    s = load_multilabel_csv(csv, img_dir, size=(8, 6))
    assert s.classes == ["cat", "dog", "person"]
    assert s.targets.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert s.images.shape == (3, 3, 8, 6) and not s.ignore.any()
    # a test split keeps the training columns; an unseen label is an error, not a silent new column
    t = load_multilabel_csv(csv, img_dir, size=8, classes=["person", "dog", "cat", "bird"])
    assert t.targets[1].tolist() == [1, 1, 0, 0]
    with pytest.raises(SSKTError, match="'cat'"):
        load_multilabel_csv(csv, img_dir, size=8, classes=["dog", "person"])


def test_csv_corrupt_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"garbage")
    csv = tmp_path / "l.csv"
    csv.write_text("image,labels\nx.png,a\n")
    with pytest.raises(SSKTError, match="x.png"):
        load_multilabel_csv(csv, tmp_path, size=8)


def test_cifar_mosaics_label_is_the_set_of_tile_classes() -> None:
    from sskt.data.mosaic import make_mosaics

    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(200) % 10
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=gen)
    m = make_mosaics(images, labels, n=400, seed=3)
    assert m.images.shape == (400, 3, 64, 64) and m.images.dtype == torch.uint8
    # each quadrant is the recorded source image, and the target is exactly its classes
    assert torch.equal(m.images[:, :, 32:, :32], images[m.tiles[:, 2]])
    expected = torch.zeros(400, 10).scatter_(1, labels[m.tiles], 1.0)
    assert torch.equal(m.targets, expected)
    # label-set sizes 1..4 all occur, about a quarter each
    sizes = torch.bincount(m.targets.sum(1).long(), minlength=5)[1:]
    assert sizes.min() > 60 and sizes.sum() == 400
    # seeded: same seed, same mosaics; another seed, others
    assert torch.equal(make_mosaics(images, labels, n=400, seed=3).images, m.images)
    assert not torch.equal(make_mosaics(images, labels, n=400, seed=4).tiles, m.tiles)
    split = m.to_split([str(i) for i in range(10)])
    assert len(split) == 400 and not split.ignore.any()
