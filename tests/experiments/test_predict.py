"""`sskt predict` and `sskt evaluate MODEL DATA_DIR`: a trained model used on image files as users have them."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import sskt
from sskt.cli import main
from sskt.config import DataConfig, ExperimentConfig
from sskt.data.datasets import load_data
from sskt.engine.run import fit
from sskt.models.target import TargetNetwork

from testutils import CIFAR_JPEG, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch scratch run on digits: its target.pt and checkpoint."""
    tmp = tmp_path_factory.mktemp("predict-run")
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp)))
    return result.out_dir / "target.pt", result.checkpoint


def _noise(shape, seed):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.fixture
def photos(tmp_path):
    """A folder (with a subfolder) of images of many sizes and modes, a hidden file and a text file."""
    root = tmp_path / "photos"
    (root / "more").mkdir(parents=True)
    Image.fromarray(_noise((40, 70, 3), 0)).save(root / "wide.png")
    Image.fromarray(_noise((300, 120, 3), 1)).save(root / "more" / "tall.jpg")
    Image.fromarray(_noise((9, 9), 2), "L").save(root / "grey.bmp")
    Image.fromarray(_noise((16, 16, 4), 3), "RGBA").save(root / "more" / "alpha.png")
    Image.fromarray(_noise((8, 8, 3), 4)).convert("P").save(root / "palette.gif")
    (root / ".hidden.png").write_bytes(b"not looked at")
    (root / "notes.txt").write_text("not an image")
    if (CIFAR_JPEG / "test" / "cat" / "0000.jpg").exists():
        (root / "cat.jpg").write_bytes((CIFAR_JPEG / "test" / "cat" / "0000.jpg").read_bytes())
    return root


def _err_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sskt: error:"), lines
    return lines[0]


def test_predict_a_folder_prints_a_table_and_writes_csv_and_json(trained, photos, tmp_path, capsys):
    model = trained[0]
    images = sorted(p for p in photos.rglob("*") if p.suffix in (".png", ".jpg", ".bmp", ".gif")
                    and not p.name.startswith("."))
    capsys.readouterr()
    assert main(["predict", str(model), str(photos), "--top-k", "3", "--csv", str(tmp_path / "p.csv"),
                 "--json", str(tmp_path / "p.json")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["path", "class", "probability", "top", "3"]
    assert sorted(line.split()[0] for line in table[1:len(images) + 1]) == sorted(map(str, images))

    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["path"] for r in rows] == [str(p) for p in images]  # every image once, nothing else
    for r in rows:
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert r["class"] == r["top_k"][0]["class"] and r["probability"] == probs[0]
        assert r["class"] in [str(c) for c in range(10)]
    with open(tmp_path / "p.csv", newline="") as fh:
        table_rows = list(csv.DictReader(fh))
    assert [t["path"] for t in table_rows] == [r["path"] for r in rows]
    assert [t["top3_class"] for t in table_rows] == [r["top_k"][2]["class"] for r in rows]
    assert [float(t["probability"]) for t in table_rows] == pytest.approx([r["probability"] for r in rows], abs=1e-6)

    # the Python API says the same, and its probabilities are the softmax of the model's logits
    api = sskt.predict(model, [photos], top_k=3, batch_size=2)
    assert [(r["path"], r["class"]) for r in api] == [(r["path"], r["class"]) for r in rows]
    assert [r["probability"] for r in api] == pytest.approx([r["probability"] for r in rows], abs=1e-6)
    loaded = sskt.load_model(model)
    with torch.no_grad():
        want = loaded(loaded.preprocess(images)).softmax(1).max(1).values
    assert [r["probability"] for r in rows] == pytest.approx(want.tolist(), abs=1e-6)


def test_predict_json_alone_prints_one_json_document(trained, photos, capsys):
    capsys.readouterr()
    assert main(["predict", str(trained[0]), str(photos / "wide.png"), "--json", "--top-k", "20"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and len(rows[0]["top_k"]) == 10  # top-k stops at the number of classes
    assert sum(t["probability"] for t in rows[0]["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_bad_inputs_are_one_line_each(trained, tmp_path, capsys):
    model = str(trained[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert main(["predict", model, str(tmp_path / "empty")]) == 2
    assert "holds no image files" in _err_line(capsys)
    assert main(["predict", model, str(tmp_path / "nope.jpg")]) == 2
    assert "image not found" in _err_line(capsys)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["predict", model, str(tmp_path / "broken.jpg")]) == 2
    assert "corrupt image file" in _err_line(capsys) and "broken.jpg" not in capsys.readouterr().out


def test_multilabel_models_give_a_sigmoid_per_class_and_their_labels(photos, tmp_path):
    path = TargetNetwork("cifar_resnet20", 3).save(tmp_path / "tags.pt", classes=["sky", "tree", "car"],
                                                   multilabel=True, input_shape=[3, 8, 8])
    model = sskt.load_model(path)
    rows = sskt.predict(model, photos, top_k=3)
    with torch.no_grad():
        want = model(model.preprocess([r["path"] for r in rows])).sigmoid()
    for r, p in zip(rows, want.tolist()):
        assert sorted(t["probability"] for t in r["top_k"]) == pytest.approx(sorted(p), abs=1e-6)
        assert r["labels"] == [c for c, v in zip(model.classes, p) if v >= 0.5]


@pytest.fixture(scope="module")
def digits_test_folder(tmp_path_factory):
    """The run's own test split (digits) as PNG files in ``root/test/<class>/``."""
    root = tmp_path_factory.mktemp("digits-folder")
    splits = load_data(DataConfig(dataset="digits", per_class=10))
    for i, (image, label) in enumerate(zip(splits.test.images, splits.test.targets.tolist())):
        folder = root / "test" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    return root


def test_evaluate_a_model_file_on_class_folders(trained, digits_test_folder, tmp_path, capsys):
    model, checkpoint = trained
    capsys.readouterr()
    assert main(["evaluate", str(model), str(digits_test_folder), "--json", "--out", str(tmp_path / "pics")]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = sskt.predict(model, digits_test_folder / "test")
    hand = sum(r["class"] == r["path"].split("/")[-2] for r in rows)
    assert result["images"] == len(rows) == 540
    assert result["accuracy"] == pytest.approx(100.0 * hand / len(rows))
    counts = result["confusion_matrix"]["counts"]
    assert sum(map(sum, counts)) == 540
    assert {c: v["images"] for c, v in result["per_class"].items()} == {
        d.name: len(list(d.iterdir())) for d in (digits_test_folder / "test").iterdir()}
    accuracies = [v["accuracy"] for v in result["per_class"].values()]
    assert result["macro_accuracy"] == pytest.approx(sum(accuracies) / len(accuracies))
    picture = tmp_path / "pics" / "target.pt.confusion.png"
    assert result["confusion_picture"] == str(picture) and picture.stat().st_size > 10_000
    with Image.open(picture) as im:
        assert im.format == "PNG" and round(im.info["dpi"][0]) >= 150

    # the same images through the training checkpoint's own test split: the same score
    assert main(["evaluate", str(checkpoint)]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == pytest.approx(result["accuracy"], abs=1e-6)


def test_evaluate_prints_tables_and_writes_the_picture_beside_the_model(trained, digits_test_folder, tmp_path,
                                                                          capsys):
    model = tmp_path / "digits.pt"
    model.write_bytes(trained[0].read_bytes())
    some = tmp_path / "three"
    for c in ("1", "4", "7"):  # fewer class folders than the model has classes
        (some / c).mkdir(parents=True)
        for f in sorted((digits_test_folder / "test" / c).iterdir())[:5]:
            (some / c / f.name).write_bytes(f.read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(model), str(some)]) == 0
    out = capsys.readouterr().out
    assert "15 images" in out and "macro-averaged accuracy" in out and "confusion matrix" in out
    assert (tmp_path / "digits.pt.confusion.png").is_file()
    # the training checkpoint scores the same on the folder
    assert main(["evaluate", str(model), str(some), "--json", "--out", str(tmp_path)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(trained[1]), str(some), "--json", "--out", str(tmp_path)]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_checkpoint["per_class"] == from_file["per_class"] and set(from_file["per_class"]) == {"1", "4", "7"}


def test_evaluate_folder_errors_are_one_line(trained, digits_test_folder, tmp_path, capsys):
    model = str(trained[0])
    (tmp_path / "bad" / "7").mkdir(parents=True)
    (tmp_path / "bad" / "giraffe").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "7" / "a.png")
    assert main(["evaluate", model, str(tmp_path / "bad")]) == 2
    assert "giraffe" in _err_line(capsys)
    assert main(["evaluate", model]) == 2
    assert "name the folder" in _err_line(capsys)
    assert main(["evaluate", model, str(tmp_path / "missing")]) == 2
    assert "not found" in _err_line(capsys)
    assert main(["evaluate", model, str(digits_test_folder), "--protocol", "knn"]) == 2
    assert "--protocol" in _err_line(capsys)
