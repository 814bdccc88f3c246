"""Folders of images as users have them: layouts without a test split, the split sskt makes (stratified,
seeded, disjoint, copies together, written and reused), CSV roots, mixed sizes and modes, EXIF rotation,
counts that scale with the data, and the messages when the data does not fit."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sskt.config import DataConfig
from sskt.data.datasets import load_data
from sskt.data.images import auto_image_size
from sskt.errors import SSKTError

from testutils import CIFAR_JPEG, need


def _ids(images: torch.Tensor) -> list[int]:
    """The id written into each synthetic image (every pixel of image i holds i)."""
    return images[:, 0, 0, 0].tolist()


def _save(path: Path, value: int, size: tuple[int, int] = (4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _one_folder(root: Path, counts: dict[str, int], start: int = 1) -> Path:
    """root/<class>/<n>.png, each image a different constant value (its id), ids consecutive per class."""
    i = start
    for name, n in counts.items():
        for k in range(n):
            _save(root / name / f"{k:03d}.png", i)
            i += 1
    return root


def _split_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), **kw)


def test_one_folder_is_split_stratified_seeded_and_disjoint(tmp_path):
    root = _one_folder(tmp_path / "pets", {"cat": 10, "dog": 10, "emu": 10})
    split = tmp_path / "run" / "split.csv"
    s = load_data(_cfg(root, val_fraction=0.25, split_file=str(split)))
    assert s.classes == ["cat", "dog", "emu"]
    for part, n in ((s.test, 2), (s.val, 2), (s.train, 6)):  # 20% of 10 to test, 25% of the other 8 to val
        assert torch.bincount(part.targets, minlength=3).tolist() == [n] * 3
    tr, va, te = (set(_ids(p.images)) for p in (s.train, s.val, s.test))
    assert not tr & va and not tr & te and not va & te and tr | va | te == set(range(1, 31))
    for part in (s.train, s.val, s.test):  # each label belongs to its image (class folders hold consecutive ids)
        assert [(i - 1) // 10 for i in _ids(part.images)] == part.targets.tolist()

    rows = _split_rows(split)
    assert list(rows[0]) == ["path", "label", "split"] and len(rows) == 30
    assert rows[0]["path"] == "cat/000.png" and {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "test" for r in rows) == 6

    again = load_data(_cfg(root, val_fraction=0.25))  # not written, still the same for the same seed
    assert _ids(again.test.images) == _ids(s.test.images) and _ids(again.val.images) == _ids(s.val.images)
    other = load_data(_cfg(root, val_fraction=0.25, subset_seed=1))
    assert _ids(other.test.images) != _ids(s.test.images)


def test_the_split_file_is_reused_and_new_images_are_left_out_with_a_notice(tmp_path, capsys):
    root = _one_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    split = tmp_path / "split.csv"
    first = load_data(_cfg(root, split_file=str(split)))
    _save(root / "dog" / "new.png", 99)
    capsys.readouterr()
    second = load_data(_cfg(root, split_file=str(split), subset_seed=5))  # the file wins over the seed
    assert _ids(second.test.images) == _ids(first.test.images)
    assert _ids(second.train.images) == _ids(first.train.images)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 image(s) are not in the split file" in err[0] and "dog/new.png" in err[0]

    (root / "cat" / "000.png").unlink()
    with pytest.raises(SSKTError, match=r"lists 1 file\(s\) that do not exist .*delete .*split\.csv to split the "
                                        r"data again") as e:
        load_data(_cfg(root, split_file=str(split)))
    assert "\n" not in str(e.value)
    split.unlink()
    third = load_data(_cfg(root, split_file=str(split)))  # re-split, now with the new image
    assert len(third.train) + len(third.test) == 12


def test_exact_copies_land_on_one_side_of_the_split(tmp_path):
    root = _one_folder(tmp_path / "d", {"a": 8, "b": 8})
    for k in range(3):  # three copies of one image under other names
        shutil.copy(root / "a" / "000.png", root / "a" / f"copy{k}.png")
    for seed in range(6):
        split = tmp_path / f"split{seed}.csv"
        load_data(_cfg(root, subset_seed=seed, val_fraction=0.3, split_file=str(split)))
        part = {r["path"]: r["split"] for r in _split_rows(split)}
        assert len({part["a/000.png"]} | {part[f"a/copy{k}.png"] for k in range(3)}) == 1
        assert {p for p in part.values()} == {"train", "val", "test"}


def test_train_folder_without_a_test_folder_is_split(tmp_path):
    _one_folder(tmp_path / "r" / "train", {"x": 5, "y": 5})
    s = load_data(_cfg(tmp_path / "r", test_fraction=0.4))
    assert torch.bincount(s.test.targets).tolist() == [2, 2] and torch.bincount(s.train.targets).tolist() == [3, 3]


def test_a_csv_file_as_the_root(tmp_path):
    _one_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    elsewhere = tmp_path / "far" / "b_extra.png"
    _save(elsewhere, 77)
    lines = ["path,label,notes"] + [f"imgs/{c}/{k:03d}.png,{c}," for c in "ab" for k in range(5)]
    lines.append(f"{elsewhere},b,absolute path")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    s = load_data(_cfg(tmp_path / "labels.csv", split_file=str(tmp_path / "split.csv")))
    assert s.classes == ["a", "b"] and len(s.train) + len(s.test) == 11
    assert torch.bincount(s.test.targets).tolist() == [1, 1]
    assert "imgs/a/000.png" in {r["path"] for r in _split_rows(tmp_path / "split.csv")}  # relative to the CSV

    given = ["path,label,split"] + [f"imgs/a/{k:03d}.png,a,{'test' if k == 0 else 'train'}" for k in range(5)] + \
            [f"imgs/b/{k:03d}.png,b,{['test', 'val'][k] if k < 2 else 'train'}" for k in range(5)]
    (tmp_path / "given.csv").write_text("\n".join(given) + "\n")
    g = load_data(_cfg(tmp_path / "given.csv"))
    assert _ids(g.test.images) == [1, 6] and _ids(g.val.images) == [7] and len(g.train) == 7

    (tmp_path / "bad.csv").write_text("path,label\nimgs/a/000.png,a\nimgs/a/nope.png,a\n")
    with pytest.raises(SSKTError, match=r"bad\.csv lists 1 file\(s\) that do not exist"):
        load_data(_cfg(tmp_path / "bad.csv"))


def _modes_folder(root: Path) -> list[tuple[int, int]]:
    """One image per mode and size a user may have, in train/a and train/b; returns their sizes."""
    rng = np.random.default_rng(0)
    made = {
        "grey.png": Image.new("L", (60, 40), 100),
        "alpha.png": Image.new("RGBA", (50, 50), (255, 0, 0, 0)),
        "palette.gif": Image.new("RGB", (48, 64), (0, 0, 255)).convert("P"),
        "cmyk.jpg": Image.new("CMYK", (80, 60), (0, 0, 0, 0)),
        "deep.png": Image.fromarray(np.full((40, 40), 65535, np.uint16)),
        "tiny.png": Image.new("RGB", (5, 7), (0, 255, 0)),
        "large.jpg": Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)),
    }
    for cls in ("a", "b"):
        for name, im in made.items():
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            im.save(root / "train" / cls / name)
        _save(root / "test" / cls / "t.png", 9, (30, 20))
    return [im.size for im in made.values()] * 2


def test_mixed_sizes_and_modes_decode_to_one_chosen_square(tmp_path, capsys):
    sizes = _modes_folder(tmp_path)
    assert Image.open(tmp_path / "train" / "a" / "deep.png").mode.startswith("I")  # really 16-bit on disk
    want = auto_image_size(sizes)
    s = load_data(_cfg(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sskt: images of mixed sizes (median shorter side 48 px); decoding at {want} px "
                   f"(set data.image_size to choose)"]
    assert s.meta["image_size"] == want == 32
    assert s.train.images.shape == (14, 3, want, want) and s.test.images.shape == (2, 3, want, want)
    by_name = dict(zip(sorted(["grey.png", "alpha.png", "palette.gif", "cmyk.jpg", "deep.png", "tiny.png",
                               "large.jpg"]), s.train.images[:7]))
    assert by_name["grey.png"][:, 5, 5].tolist() == [100, 100, 100]
    assert by_name["alpha.png"][:, 5, 5].tolist() == [255, 255, 255]  # transparency on white
    assert by_name["palette.gif"][:, 5, 5].tolist() == [0, 0, 255]
    assert by_name["deep.png"][:, 5, 5].tolist() == [255, 255, 255]  # 16-bit white is white
    assert by_name["tiny.png"][:, 5, 5].tolist() == [0, 255, 0]
    assert (by_name["cmyk.jpg"][:, 5, 5] >= 250).all()  # CMYK "no ink" is white

    fixed = load_data(_cfg(tmp_path, image_size=24))
    assert fixed.train.images.shape[-2:] == (24, 24) and "mixed sizes" not in capsys.readouterr().err


def test_same_size_images_keep_their_size_without_a_notice(tmp_path, capsys):
    for split in ("train", "test"):
        for c in ("a", "b"):
            _save(tmp_path / split / c / "0.png", 3 if split == "train" else 4, (12, 8))  # test != train
    s = load_data(_cfg(tmp_path))
    assert s.train.images.shape == (2, 3, 8, 12) and s.meta["image_size"] is None
    assert capsys.readouterr().err == ""


def test_an_exif_rotated_photo_decodes_upright(tmp_path):
    upright = np.zeros((32, 32, 3), np.uint8)
    upright[:10, :10] = (255, 0, 0)  # a red patch, top left when upright
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    assert np.asarray(stored)[-5, 5, 0] > 200  # on disk the patch is bottom left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        photo = stored if split == "train" else Image.fromarray(255 - np.asarray(stored))  # test != train
        photo.save(tmp_path / split / "a" / "photo.jpg", exif=exif, quality=95)
    img = load_data(_cfg(tmp_path)).train.images[0]
    assert img.shape == (3, 32, 32)
    corners = {"top left": img[:, 5, 5], "top right": img[:, 5, -5], "bottom left": img[:, -5, 5],
               "bottom right": img[:, -5, -5]}
    red = [k for k, v in corners.items() if v[0] > 200 and v[1] < 60 and v[2] < 60]
    assert red == ["top left"]


def test_cifar_like_squares_decode_exactly_as_pil_does(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in ("a", "b"):
            for k in range(2):
                _path = tmp_path / split / c / f"{k}.jpg"
                _path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(_path)
    s = load_data(_cfg(tmp_path))
    direct = [np.asarray(Image.open(tmp_path / "train" / c / f"{k}.jpg").convert("RGB"))
              for c in "ab" for k in range(2)]
    assert np.array_equal(s.train.images.numpy(), np.stack(direct).transpose(0, 3, 1, 2))
    assert s.meta["image_size"] == 32
    sized = load_data(_cfg(tmp_path, image_size=32))  # the size they already have: untouched
    assert torch.equal(sized.train.images, s.train.images)
    _save(tmp_path / "test" / "a" / "odd.png", 7, (40, 30))  # a stray test image of another size is fitted
    assert load_data(_cfg(tmp_path)).test.images.shape == (5, 3, 32, 32)


def test_the_shared_cifar_jpegs_decode_exactly_as_pil_does():
    from sskt.data.images import decode_images

    files = sorted((need(CIFAR_JPEG) / "train" / "cat").iterdir())[:16]
    direct = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).transpose(0, 3, 1, 2)
    assert np.array_equal(decode_images(files, None).numpy(), direct)
    assert np.array_equal(decode_images(files, 32).numpy(), direct)


def test_hidden_files_and_folders_are_skipped(tmp_path):
    root = _one_folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "._000.png").write_bytes(b"macOS resource fork, not an image")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    _one_folder(root / ".ipynb_checkpoints", {"a": 2})
    s = load_data(_cfg(root))
    assert s.classes == ["a", "b"] and len(s.train) + len(s.test) == 6


def test_a_class_too_small_for_the_split_is_one_error_naming_it(tmp_path):
    root = _one_folder(tmp_path / "d", {"big": 6, "emu": 1})
    with pytest.raises(SSKTError, match=r"class 'emu' has 1 image\(s\), too few to split into train and test") as e:
        load_data(_cfg(root))
    assert "\n" not in str(e.value)
    _save(root / "emu" / "001.png", 50)
    assert len(load_data(_cfg(root)).test) == 2  # two images are enough without validation
    with pytest.raises(SSKTError, match=r"class 'emu' has 2 image\(s\), too few to split into train, val and test"):
        load_data(_cfg(root, val_fraction=0.2))
    shutil.copy(root / "emu" / "000.png", root / "emu" / "002.png")
    with pytest.raises(SSKTError, match=r"class 'emu' has 3 image\(s\) \(2 distinct: exact copies stay together\)"):
        load_data(_cfg(root, val_fraction=0.2))


def test_counts_scale_with_the_data_with_one_notice_each(tmp_path, capsys):
    _one_folder(tmp_path / "train", {"a": 10, "b": 10})
    _one_folder(tmp_path / "test", {"a": 1, "b": 1}, start=100)
    s = load_data(_cfg(tmp_path, per_class=4, val_per_class=10))
    assert torch.bincount(s.val.targets).tolist() == [6, 6]  # all 6 outside the 4 labelled per class
    assert torch.bincount(s.train.targets).tolist() == [4, 4]
    assert not set(_ids(s.val.images)) & set(_ids(s.train.images))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sskt: data.val_per_class=10 but 2 of 2 classes have fewer images to spare (outside the 4 "
                   "labelled per class; fewest: 'a' with 6); validating on the 12 there are"]

    s = load_data(_cfg(tmp_path, per_class=4, val_per_class=2, unlabeled="rest", unlabeled_count=1000))
    assert len(s.val) == 4 and len(s.unlabeled) == 20 - 8 - 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sskt: data.unlabeled_count=1000 but 8 images are unlabelled; using all 8"]

    extra = _one_folder(tmp_path / "unl", {"x": 5}, start=200)
    s = load_data(_cfg(tmp_path, per_class=4, unlabeled=str(extra), unlabeled_count=50))
    assert len(s.unlabeled) == 5
    assert capsys.readouterr().err.strip() == "sskt: data.unlabeled_count=50 but 5 images are unlabelled; using all 5"


def test_per_class_too_large_names_the_class_and_the_largest_that_works(tmp_path):
    _one_folder(tmp_path / "train", {"a": 9, "b": 4})
    _one_folder(tmp_path / "test", {"a": 1, "b": 1}, start=100)
    with pytest.raises(SSKTError, match=r"class 'b' has 4 train images, fewer than the 7 per class asked; set "
                                        r"data.per_class to 4 or less") as e:
        load_data(_cfg(tmp_path, per_class=7))
    assert "\n" not in str(e.value)
    assert len(load_data(_cfg(tmp_path, per_class=4)).train) == 8  # the advice works


def test_imbalanced_classes_are_named_in_one_line(tmp_path, capsys):
    _one_folder(tmp_path / "train", {"many": 13, "few": 4})
    _one_folder(tmp_path / "test", {"many": 1, "few": 1}, start=100)
    load_data(_cfg(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'many' has 13 training images, 'few' 4" in err[0]
    load_data(_cfg(tmp_path, per_class=4))  # a balanced labelled subset: nothing to say
    assert capsys.readouterr().err == ""


def test_a_given_val_part_and_val_per_class_conflict(tmp_path):
    root = _one_folder(tmp_path / "d", {"a": 6, "b": 6})
    split = tmp_path / "split.csv"
    s = load_data(_cfg(root, val_fraction=0.3, split_file=str(split)))
    again = load_data(_cfg(root, split_file=str(split)))  # the written val part is the validation split
    assert _ids(again.val.images) == _ids(s.val.images)
    with pytest.raises(SSKTError, match="has a val part and data.val_per_class is set; drop data.val_per_class"):
        load_data(_cfg(root, split_file=str(split), val_per_class=1))


def test_val_fraction_holds_out_part_of_a_train_folder_and_the_test_folder_stays(tmp_path, monkeypatch):
    _one_folder(tmp_path / "d" / "train", {"a": 10, "b": 10})
    _one_folder(tmp_path / "d" / "test", {"a": 2, "b": 2}, start=100)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a relative root, spelled with ..
    cfg = _cfg(Path("../d"), val_fraction=0.2, split_file="split.csv")
    s = load_data(cfg)
    assert sorted(_ids(s.test.images)) == [100, 101, 102, 103]  # the test folder, untouched
    assert torch.bincount(s.val.targets).tolist() == [2, 2] and len(s.train) == 16
    rows = _split_rows(Path("split.csv"))
    assert {r["split"] for r in rows if r["path"].startswith("test/")} == {"test"} and len(rows) == 24
    again = load_data(cfg)
    assert _ids(again.val.images) == _ids(s.val.images)
    with pytest.raises(SSKTError, match="data.val_fraction and data.val_per_class both ask"):
        load_data(_cfg(Path("../d"), val_fraction=0.2, val_per_class=2))
