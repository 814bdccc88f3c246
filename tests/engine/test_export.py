"""`sskt export`: every format from a training checkpoint, away from the run's data, sources and folder."""
import json
import os

import pytest
import torch

import sskt.data.datasets
import sskt.engine.run
from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.engine.export import export, load_safetensors
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.models.target import TargetNetwork
from sskt.sources import load_network

from testutils import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch SSKT run on digits (validation split, one source), then the source file is deleted."""
    tmp = tmp_path_factory.mktemp("export-run")
    source = TargetNetwork("cifar_resnet20", 10).save(tmp / "source.pt")
    raw = tiny_config(tmp, data={"val_per_class": 5},
                      method={"name": "sskt", "sources": [{"name": "digitsrc", "checkpoint": str(source),
                                                           "input_size": 8}]})
    result = fit(ExperimentConfig.from_dict(raw))
    source.unlink()
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    target = TargetNetwork("cifar_resnet20", 10)
    target.load_state_dict({k[len("method.target."):]: v for k, v in ckpt["state_dict"].items()
                            if k.startswith("method.target.")})
    return result, target.eval(), [str(c) for c in range(10)]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An empty working directory, and no training data: loading it fails as a missing dataset does."""
    calls = []

    def no_data(*args, **kwargs):
        calls.append(args)
        raise SSKTError("dataset digits not found (removed by the test)")

    monkeypatch.setattr(sskt.data.datasets, "load_data", no_data)
    monkeypatch.setattr(sskt.engine.run, "load_data", no_data)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return calls


def _images(n):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
@torch.no_grad()
def test_every_format_without_data_or_sources(run, elsewhere, capsys):
    result, target, classes = run
    x = _images(3)
    want = target(x)

    assert main(["export", str(result.checkpoint), "target.pt"]) == 0
    assert "target.pt.md (model card)" in capsys.readouterr().out
    saved = torch.load("target.pt", weights_only=True)
    assert saved["classes"] == classes and saved["input_shape"] == [3, 8, 8]
    loaded = load_network(None, "target.pt")
    assert loaded.classes == classes and loaded.input_size == 8
    assert torch.allclose(loaded.module.eval()(target.normalize(x)), want, atol=1e-5)

    assert main(["export", str(result.checkpoint), "target.ts"]) == 0
    extra = {"sskt.json": ""}
    scripted = torch.jit.load("target.ts", _extra_files=extra)
    assert torch.allclose(scripted(x), want, atol=1e-5)
    assert json.loads(extra["sskt.json"])["classes"] == classes

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    # --format wins over the suffix
    assert main(["export", str(result.checkpoint), "target.bin", "--format", "onnx"]) == 0
    props = {p.key: p.value for p in onnx.load("target.bin").metadata_props}
    assert json.loads(props["classes"]) == classes
    session = ort.InferenceSession("target.bin", providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]  # traced with 2 images: the batch axis is dynamic
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)

    pytest.importorskip("safetensors")
    written = export(result.checkpoint, "target.safetensors")
    net, meta = load_safetensors(written.path)
    assert written.format == "safetensors" and meta["classes"] == classes and meta["arch"] == "cifar_resnet20"
    assert torch.allclose(net(x), want, atol=1e-5)

    card = (written.card).read_text()
    assert written.card.name == "target.safetensors.md"
    final = result.record["final"]
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in card and f"{final:.2f}%" in card and "digitsrc" in card
    assert f"{result.record['best']:.2f}%" in card and "cifar_resnet20" in card
    assert elsewhere == []  # the data was never asked for
    assert sorted(os.listdir(".")) == ["target.bin", "target.bin.md", "target.pt", "target.pt.md",
                                       "target.safetensors", "target.safetensors.md", "target.ts", "target.ts.md"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_exported_files_honour_the_umask(run, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = export(run[0].checkpoint, tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert written.path.stat().st_mode & 0o777 == mode and written.card.stat().st_mode & 0o777 == mode
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_folder_receives_the_model_inside_it(run, tmp_path):
    ckpt = str(run[0].checkpoint)
    assert main(["export", ckpt, str(tmp_path)]) == 0  # an existing folder
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.pt.md").is_file()
    assert main(["export", ckpt, str(tmp_path / "new") + "/", "--format", "onnx"]) == 0  # a new one, named with /
    assert (tmp_path / "new" / "model.onnx").is_file() and not (tmp_path / "new").is_file()


def test_unwritable_outputs_are_one_line_errors(run, tmp_path, capsys):
    ckpt = str(run[0].checkpoint)
    capsys.readouterr()

    (tmp_path / "a_file").write_text("")
    assert main(["export", ckpt, str(tmp_path / "a_file" / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sskt: error: cannot write")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # nothing half-written


def test_checkpoint_without_target_record(run, tmp_path, monkeypatch, capsys):
    """Checkpoints from before the record: rebuilt from their weights, class names from the data."""
    result, target, classes = run
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    del ckpt["sskt"]["target"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    written = export(old, tmp_path / "old.pt")
    saved = torch.load(written.path, weights_only=True)
    assert saved["classes"] == classes and saved["input_shape"] == [3, 8, 8]
    net = load_network(None, written.path).module.eval()
    x = _images(2)
    with torch.no_grad():
        assert torch.allclose(net(target.normalize(x)), target(x), atol=1e-5)

    monkeypatch.setattr(sskt.data.datasets, "load_data",
                        lambda *a, **k: (_ for _ in ()).throw(SSKTError("dataset digits not found")))
    capsys.readouterr()
    assert main(["export", str(old), str(tmp_path / "again.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no target record" in err[0] and "dataset digits not found" in err[0]
