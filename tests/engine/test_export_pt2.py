"""`sskt export ... model.pt2`: the target as a torch.export program that predicts what the trained model
predicts, carries its class names, and loads with `sskt.load_model` / `sskt predict` like every other format."""
import json
import warnings
import zipfile

import pytest
import torch
from PIL import Image

import sskt
from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.engine.export import export
from sskt.engine.run import fit
from sskt.errors import SSKTError

from testutils import assert_unloadable, tiny_config

CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch scratch run on digits (8 x 8 images), its checkpoint, target.pt and a .pt2 export."""
    tmp = tmp_path_factory.mktemp("export-pt2")
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp)))
    written = export(result.checkpoint, tmp / "model.pt2")
    return {"last.ckpt": result.checkpoint, "target.pt": result.out_dir / "target.pt", "model.pt2": written.path,
            "card": written.card, "format": written.format}


@pytest.mark.parametrize("reference", ["last.ckpt", "target.pt"])
def test_the_pt2_export_predicts_what_the_trained_model_does_on_a_real_image(run, image, reference):
    want_model, model = sskt.load_model(run[reference]), sskt.load_model(run["model.pt2"])
    x = model.preprocess([image])
    assert torch.equal(x, want_model.preprocess([image]))
    with torch.no_grad():
        want = want_model(x)
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
        # and the file as a PyTorch user deploys it, without sskt
        plain = torch.export.load(str(run["model.pt2"])).module()
        torch.testing.assert_close(plain(x), want, rtol=1e-5, atol=1e-6)
    assert sskt.predict(model, [image])[0]["class"] == sskt.predict(want_model, [image])[0]["class"]


@pytest.mark.parametrize("batch", [1, 7])  # neither is the traced batch size (2): the batch dimension is dynamic
def test_the_pt2_export_gives_the_trained_models_logits_at_any_batch_size(run, batch):
    want_model, model = sskt.load_model(run["target.pt"]), sskt.load_model(run["model.pt2"])
    x = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        got, want = model(x), want_model(x)
    assert got.shape == (batch, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_load_model_on_a_pt2_knows_its_classes_and_input_and_stays_in_eval_mode(run):
    model = sskt.load_model(run["model.pt2"])
    assert (model.classes, model.input_shape, model.input_size, model.multilabel, model.arch, model.format) == (
        CLASSES, (3, 8, 8), 8, False, "cifar_resnet20", "pt2")
    assert model.training is False and not any(m.training for m in model.modules())
    model.eval()  # torch refuses eval() on an exported program; on the loaded model it is harmless
    with pytest.raises(SSKTError, match="eval mode only"):
        model.train()
    # the metadata travels in the file itself, for users without sskt
    extra = {"sskt.json": ""}
    torch.export.load(str(run["model.pt2"]), extra_files=extra)
    meta = json.loads(extra["sskt.json"])
    assert meta["classes"] == CLASSES and meta["input_shape"] == [3, 8, 8] and meta["arch"] == "cifar_resnet20"


def test_the_model_card_says_how_to_load_a_pt2(run):
    card = run["card"].read_text()
    assert run["format"] == "pt2" and run["card"].name == "model.pt2.md"
    assert "exported as pt2" in card and "torch.export.load(path)" in card and "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in card


def test_sskt_predict_works_on_a_pt2(run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 12), (200, 30, 90)).save(image)
    capsys.readouterr()
    assert main(["predict", str(run["model.pt2"]), str(image), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    want = sskt.predict(run["target.pt"], [image])
    assert [r["class"] for r in rows] == [want[0]["class"]]
    assert rows[0]["probability"] == pytest.approx(want[0]["probability"], abs=1e-5)


def test_the_format_flag_and_suffix_choose_pt2(run, tmp_path):
    written = export(run["last.ckpt"], tmp_path / "model.bin", format="pt2")  # --format wins over the suffix
    assert written.format == "pt2" and sskt.load_model(written.path).classes == CLASSES
    inside = export(run["last.ckpt"], f"{tmp_path / 'folder'}/", format="pt2")  # a new folder, named with /
    assert inside.path == tmp_path / "folder" / "model.pt2" and sskt.load_model(inside.path).format == "pt2"


def test_exporting_pt2_or_torchscript_prints_no_deprecation_notice(run, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(run["last.ckpt"], tmp_path / "m.pt2")
        export(run["last.ckpt"], tmp_path / "m.ts")  # torch.jit is deprecated in this torch: sskt says nothing
        sskt.load_model(tmp_path / "m.ts")
    assert [str(w.message) for w in caught] == []


def test_an_unknown_format_is_one_line_naming_pt2(run, tmp_path, capsys):
    with pytest.raises(SSKTError) as err:
        export(run["last.ckpt"], tmp_path / "m.pt2", format="pt3")
    assert "unknown export format 'pt3'" in str(err.value) and "pt2" in str(err.value) and "\n" not in str(err.value)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export", str(run["last.ckpt"]), str(tmp_path / "m.pt2"), "--format", "pt3"])
    assert "invalid choice: 'pt3'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_architecture_torch_export_cannot_trace_is_one_line_suggesting_onnx(run, tmp_path, monkeypatch, capsys):
    def fails(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 > 0\n(many lines of trace)")

    monkeypatch.setattr(torch.export, "export", fails)
    capsys.readouterr()
    assert main(["export", str(run["last.ckpt"]), str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not be exported with torch.export" in err[0] and "--format onnx" in err[0]
    assert not list(tmp_path.iterdir())


def _repacked(src, dst, change):
    """A copy of a zip archive with each member's bytes passed through ``change(name, data)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


def _pickled_weight(name, data):
    if name.endswith("_weights_config.json"):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()
    return data


BAD_PT2 = {  # what the user gives -> what the one line says
    "junk named .pt2": (lambda run, tmp: _written(tmp / "junk.pt2", b"\x13\x37" * 40), "not a model file"),
    "not sskt's": (lambda run, tmp: _plain_program(tmp), "no sskt export"),
    "pickled weights": (lambda run, tmp: _repacked(run["model.pt2"], tmp / "p.pt2", _pickled_weight), "pickled"),
    "no metadata": (lambda run, tmp: _repacked(run["model.pt2"], tmp / "n.pt2",
                                               lambda n, d: None if n.endswith("sskt.json") else d), "no sskt.json"),
    "truncated": (lambda run, tmp: _written(tmp / "cut.pt2", run["model.pt2"].read_bytes()[:5000]), "zip"),
}


def _written(path, data):
    path.write_bytes(data)
    return path


def _plain_program(tmp):
    net = torch.nn.Linear(2, 2).eval()
    torch.export.save(torch.export.export(net, (torch.rand(1, 2),)), tmp / "plain.pt2")
    return tmp / "plain.pt2"


@pytest.mark.parametrize("kind", BAD_PT2)
def test_pt2_files_sskt_cannot_load_are_one_clear_line(run, tmp_path, capsys, kind):
    make, says = BAD_PT2[kind]
    assert_unloadable(make(run, tmp_path), says, tmp_path, capsys)


def test_a_file_is_read_by_its_content_not_its_suffix(run, tmp_path):
    renamed = _written(tmp_path / "model.pt2", run["target.pt"].read_bytes())  # an sskt .pt named .pt2
    assert sskt.load_model(renamed).format == "sskt"
    pt2_named_pt = _written(tmp_path / "model.pt", run["model.pt2"].read_bytes())
    assert sskt.load_model(pt2_named_pt).format == "pt2"
