"""`sskt.load_model`: every file a run or `sskt export` writes gives the same ready-to-use network
(eval mode, normalisation inside, classes and input size known) as the ONNX export, on a real image."""
import shutil

import pytest
import torch

import sskt
from sskt.config import ExperimentConfig
from sskt.data.images import read_image
from sskt.engine.export import export
from sskt.engine.run import fit
from sskt.models.target import TargetNetwork

from testutils import assert_unloadable, tiny_config

CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch scratch run on digits (8 x 8 images) and its exports in every format."""
    tmp = tmp_path_factory.mktemp("model-file")
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp)))
    files = {"target.pt": result.out_dir / "target.pt", "last.ckpt": result.checkpoint}
    for name in ("export.pt", "export.onnx", "export.ts", "export.safetensors"):
        files[name] = export(result.checkpoint, tmp / name).path
    return files


def _onnx_logits(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


@pytest.mark.parametrize("name", ["target.pt", "export.pt", "last.ckpt", "export.safetensors", "export.ts"])
def test_every_model_file_gives_the_onnx_exports_logits_on_a_real_image(run, image, name):
    model = sskt.load_model(run[name])
    # the image as the ONNX file's users feed it: decoded by sskt's policy, floats in [0, 1]
    x = torch.tensor(read_image(image, 8)).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(model.preprocess([image]), x)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, _onnx_logits(run["export.onnx"], x), rtol=1e-4, atol=1e-5)
    assert model.probabilities(x).sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["target.pt", "export.pt", "last.ckpt", "export.safetensors", "export.ts"])
def test_loaded_models_are_in_eval_mode_and_know_their_input(run, name):
    model = sskt.load_model(run[name])
    assert model.training is False and not any(m.training for m in model.modules())
    assert (model.classes, model.input_size, model.input_shape, model.multilabel, model.arch) == (
        CLASSES, 8, (3, 8, 8), False, "cifar_resnet20")
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, again, alone = model(x), model(x), model(x[:1])
    # BatchNorm uses its running statistics: an image's logits depend neither on the call nor on the batch
    assert torch.equal(first, again)
    torch.testing.assert_close(alone, first[:1], rtol=1e-5, atol=1e-6)


def test_a_run_folder_loads_its_target(run):
    model = sskt.load_model(run["target.pt"].parent)
    assert model.path.name == "target.pt" and model.classes == CLASSES


def test_a_model_file_without_its_input_size_uses_the_architectures_and_says_so(tmp_path, capsys):
    path = TargetNetwork("cifar_resnet20", 3).save(tmp_path / "plain.pt", classes=["a", "b", "c"])
    model = sskt.load_model(path)
    assert model.input_size == 32 and model.classes == ["a", "b", "c"] and not model.training
    assert "does not record its input size" in capsys.readouterr().err


def _written(path, data):
    path.write_bytes(data)
    return path


def _plain_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(TargetNetwork("cifar_resnet20", 10).model.state_dict(), path)
    return path


def _scripted_without_metadata(tmp_path):
    path = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


BAD_FILES = {  # what the user gives -> what the one line says
    "onnx": (lambda run, tmp: run["export.onnx"], "onnxruntime"),
    "missing": (lambda run, tmp: tmp / "missing.pt", "not found"),
    "folder": (lambda run, tmp: tmp, "without target.pt"),
    "html": (lambda run, tmp: _written(tmp / "page.pt", b"<!DOCTYPE html><html>"), "HTML page"),
    "empty": (lambda run, tmp: _written(tmp / "empty.pt", b""), "an empty file"),
    "junk": (lambda run, tmp: _written(tmp / "junk.bin", b"\x13\x37" * 40), "not a model file"),
    "state_dict": (lambda run, tmp: _plain_state_dict(tmp), "sskt.load_network(arch, path)"),
    "torchscript": (lambda run, tmp: _scripted_without_metadata(tmp), "no sskt export"),
    "truncated": (lambda run, tmp: _written(tmp / "cut.safetensors", run["export.safetensors"].read_bytes()[:400]),
                  "export it again"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notice
@pytest.mark.parametrize("kind", BAD_FILES)
def test_files_that_are_no_model_are_one_clear_line(run, tmp_path, capsys, kind):
    make, says = BAD_FILES[kind]
    assert_unloadable(make(run, tmp_path), says, tmp_path, capsys)


def test_a_moved_target_pt_still_loads(run, tmp_path):
    moved = shutil.copy(run["export.pt"], tmp_path / "model.pt")
    assert sskt.load_model(moved).input_shape == (3, 8, 8)
