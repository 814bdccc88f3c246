"""A full disk (or an exceeded quota, or a read-only filesystem) at every write path: one `sskt: error:` line
naming the file and the space needed, exit 2, and nothing half-written: the previous file is intact and no
temporary file is left. A decoded-image cache that cannot be written is one warning; the run goes on.

The first tests fake the filesystem's error; the last ones fill a real, small tmpfs (skipped, with the reason,
where this machine does not let the tests mount one)."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import sskt.engine.run
import sskt.io
from sskt.cli import main
from sskt.data.images import decode_images
from sskt.errors import SSKTError
from sskt.io import DiskFullError, atomic_torch_save, atomic_write, disk_full_error
from sskt.sources.cache_file import CacheFile

from testutils import tiny_config

TORCH_WRITE_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _torch_write_error() -> RuntimeError:
    """What torch.save raises on a full disk: its writer's RuntimeError, chained from the OSError."""
    try:
        raise _enospc()
    except OSError as err:
        try:
            raise RuntimeError(TORCH_WRITE_ERROR) from err
        except RuntimeError as wrapped:
            return wrapped


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files a write left behind."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def _config(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("sskt: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# -- fake errors: the mechanism, wherever the machine runs the tests


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("failure, reason", [
    ("write", "No space left on device"),          # the write itself
    ("torch-write", "No space left on device"),    # torch's writer: a RuntimeError chained from ENOSPC
    ("fallocate", "No space left on device"),      # the reservation before writing
    ("fsync", "Disk quota exceeded"),              # a network filesystem reports at fsync
    ("mkstemp", "Read-only file system"),          # not even a temporary file
])
def test_a_refused_write_is_one_error_and_the_old_file_stays(tmp_path, monkeypatch, failure, reason):
    path = tmp_path / "out" / "last.ckpt"
    path.parent.mkdir()
    path.write_bytes(b"the last good checkpoint")
    data: object = b"x" * 3_100_000
    if failure == "write":
        data = _raise(_enospc())
    elif failure == "torch-write":
        data = _raise(_torch_write_error())
    elif failure == "fallocate":
        monkeypatch.setattr(sskt.io.os, "posix_fallocate", _raise(_enospc()))
    elif failure == "fsync":
        monkeypatch.setattr(sskt.io.os, "fsync", _raise(OSError(errno.EDQUOT, "Disk quota exceeded")))
    else:
        monkeypatch.setattr(sskt.io.tempfile, "mkstemp", _raise(OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(SSKTError) as caught:
        atomic_write(path, data)
    message = str(caught.value)
    assert isinstance(caught.value, DiskFullError) and "\n" not in message
    assert message.startswith(f"cannot write {path}: {reason}")
    assert "choose another out_dir, then run the same command again to resume" in message
    if isinstance(data, bytes) and failure != "mkstemp":
        assert "(about 3.1 MB needed, " in message  # the size was known before writing
    assert path.read_bytes() == b"the last good checkpoint"
    assert _leftovers(tmp_path) == []


def test_other_os_errors_are_not_called_a_full_disk(tmp_path):
    path = tmp_path / "a.bin"
    with pytest.raises(PermissionError):
        atomic_write(path, _raise(PermissionError(errno.EACCES, "Permission denied")))
    assert not path.exists() and _leftovers(tmp_path) == []


def test_a_filesystem_that_cannot_reserve_space_still_gets_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sskt.io.os, "posix_fallocate", _raise(OSError(errno.EOPNOTSUPP, "Operation not supported")))
    assert atomic_write(tmp_path / "a.bin", b"hello").read_bytes() == b"hello"


def test_a_size_hint_reserves_but_the_file_holds_only_what_was_written(tmp_path):
    path = atomic_write(tmp_path / "a.bin", lambda fh: fh.write(b"abc"), size=1 << 20)
    assert path.read_bytes() == b"abc"


def test_the_full_disk_is_found_anywhere_in_the_chain():
    assert disk_full_error(_torch_write_error()).errno == errno.ENOSPC
    try:  # raised while handling: __context__
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError:
            raise KeyError("while cleaning up")
    except KeyError as err:
        assert disk_full_error(err).errno == errno.EROFS
    assert disk_full_error(RuntimeError(TORCH_WRITE_ERROR)) is None  # no errno: not guessed
    assert disk_full_error(PermissionError(errno.EACCES, "Permission denied")) is None
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop
    assert disk_full_error(loop) is None  # a cycle ends


def test_torch_save_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1}, path)
    real_save = torch.save
    monkeypatch.setattr(sskt.io.torch, "save", _raise(_torch_write_error()))
    with pytest.raises(DiskFullError, match="^" + re.escape(f"cannot write {path}: No space left on device (")):
        atomic_torch_save({"epoch": 2}, path)
    monkeypatch.setattr(sskt.io.torch, "save", real_save)
    monkeypatch.setattr(sskt.io.os, "posix_fallocate", _raise(_enospc()))
    with pytest.raises(DiskFullError, match=r"No space left on device \(about [\d.]+ (kB|bytes) needed, "):
        atomic_torch_save({"epoch": 3, "w": torch.zeros(1000)}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1} and _leftovers(tmp_path) == []


def _pngs(folder: Path, n: int = 3, shade: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (8, 8), (40 * i, shade, 0)).save(p)
    return paths


def test_the_decoded_image_cache_on_a_full_disk_warns_once_and_decoding_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSKT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sskt.io.os, "posix_fallocate", _raise(_enospc()))
    images = decode_images(_pngs(tmp_path / "train"), None)
    again = decode_images(_pngs(tmp_path / "test", 2), None)
    assert images.shape == (3, 3, 8, 8) and again.shape == (2, 3, 8, 8) and int(images[1, 0, 0, 0]) == 40
    err = capsys.readouterr().err.strip()
    assert err.startswith("sskt: warning: cannot write ") and "\n" not in err, err  # once, for both splits
    assert "No space left on device" in err and "set SSKT_CACHE_DIR to a folder with room" in err
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_the_soft_label_cache_reserves_its_file_and_a_full_disk_leaves_none(tmp_path, monkeypatch):
    meta = {"key": "k", "parts": {}, "n": 10, "views": 2, "topk": 3, "num_classes": 10, "chunk": 4,
            "source_name": "s"}
    f = CacheFile(tmp_path / "s.sskc", meta)
    reserved = []
    monkeypatch.setattr(sskt.io.os, "posix_fallocate", lambda fd, offset, length: reserved.append(length))
    f.create()
    assert reserved == [f.size] and f.path.stat().st_size == f.size
    f.path.unlink()
    monkeypatch.setattr(sskt.io.os, "posix_fallocate", _raise(_enospc()))
    with pytest.raises(DiskFullError, match="^" + re.escape(f"cannot write {f.path}: No space left on device (about ")
                       + r"[\d.]+ kB needed, .*set method\.cache\.dir to a folder with room"):
        f.create()
    assert not f.path.exists()
    with open(f.path, "wb") as fh:  # a sparse file, as older builds left them, resumed on a full disk
        fh.truncate(f.size)
    with pytest.raises(DiskFullError, match="set method.cache.dir to a folder with room"):
        f.records(writable=True)
    assert f.path.stat().st_size == f.size  # kept: its finished chunks are not thrown away


def test_the_cli_reports_a_full_disk_under_a_library_write_in_one_line(tmp_path, monkeypatch, capsys):
    """Lightning's CSV logger writes its own file; a full disk there (wrapped, as torch's writer wraps it) is one
    line, naming no file sskt cannot know, and no temporary file is left."""
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter

    monkeypatch.setattr(_ExperimentWriter, "save", _raise(_torch_write_error()))
    assert main(["train", _config(tmp_path, tiny_config(tmp_path))]) == 2
    err = _one_error_line(capsys)
    assert err == ("sskt: error: a write failed: No space left on device; free space or choose another out_dir, "
                   "then run the same command again to resume")
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_keeps_the_last_good_one(tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second epoch's checkpoint meets a full disk
        calls.append(1)
        if len(calls) == 2:
            raise _torch_write_error()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(sskt.io.torch, "save", save)
    raw = tiny_config(tmp_path, train={"epochs": 2})
    assert main(["train", _config(tmp_path, raw)]) == 2
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _one_error_line(capsys).startswith(f"sskt: error: cannot write {ckpt}: No space left on device")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 0 and _leftovers(tmp_path) == []


# -- a real full filesystem: a small tmpfs


_MOUNTABLE: list[str] = []  # "" once a mount worked, else why it did not (checked once per session)


def _mount_reason() -> str:
    if not _MOUNTABLE:
        probe = tempfile.mkdtemp(prefix="sskt-tmpfs-probe-")
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                subprocess.run(["umount", probe], check=True)
            _MOUNTABLE.append("" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}"))
        except (OSError, subprocess.CalledProcessError) as err:
            _MOUNTABLE.append(str(err))
        finally:
            os.rmdir(probe)
    return _MOUNTABLE[0]


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size_bytes)``: a fresh tmpfs of that size under tmp_path, unmounted after the test."""
    reason = _mount_reason()
    if reason:
        pytest.skip(f"cannot mount a small tmpfs here ({reason}); the fake-error tests above cover the same code")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)]).returncode != 0:
            subprocess.run(["umount", "-l", str(where)])  # still busy: detach now, freed when closed


def _fill(fs: Path, leave: int = 0) -> None:
    """Fill the filesystem of ``fs`` until ``leave`` bytes are free."""
    st = os.statvfs(fs)
    with open(fs / "filler", "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, st.f_bavail * st.f_frsize - leave)


def test_real_full_disk_checkpoint(tmp_path, small_fs, capsys):
    """Room for one checkpoint (2.2 MB) but not a second beside it: epoch 2's fails, epoch 1's stays."""
    fs = small_fs(3 << 20)
    raw = tiny_config(tmp_path, train={"epochs": 2})
    raw["out_dir"] = str(fs / "run")
    assert main(["train", _config(tmp_path, raw)]) == 2
    ckpt = fs / "run" / "checkpoints" / "last.ckpt"
    err = _one_error_line(capsys)
    assert err.startswith(f"sskt: error: cannot write {ckpt}: No space left on device (about 2.2 MB needed, ")
    assert err.endswith("free space or choose another out_dir, then run the same command again to resume")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 0 and _leftovers(fs) == []


def test_real_full_disk_result_json(tmp_path, small_fs, monkeypatch, capsys):
    """The disk fills up right before result.json: one line; with space again, the same command finishes."""
    fs = small_fs(8 << 20)
    raw = tiny_config(tmp_path)
    raw["out_dir"] = str(fs / "run")
    real_dump = sskt.engine.run.atomic_json_dump

    def fill_then_dump(obj, path, **kwargs):
        _fill(fs)
        return real_dump(obj, path, **kwargs)

    monkeypatch.setattr(sskt.engine.run, "atomic_json_dump", fill_then_dump)
    config = _config(tmp_path, raw)
    assert main(["train", config]) == 2
    result = fs / "run" / "result.json"
    assert _one_error_line(capsys).startswith(f"sskt: error: cannot write {result}: No space left on device (about ")
    assert not result.exists() and _leftovers(fs) == []
    monkeypatch.setattr(sskt.engine.run, "atomic_json_dump", real_dump)
    (fs / "filler").unlink()
    assert main(["train", config]) == 0 and result.is_file()


def test_real_full_disk_soft_label_cache(tmp_path, small_fs, capsys):
    """Room for the header but not the records: an error when the file is created, never a SIGBUS later."""
    fs = small_fs(1 << 20)
    _fill(fs, leave=8192)
    source = {"name": "rnd", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
    raw = tiny_config(tmp_path, method={"name": "sskt", "sources": [source],
                                        "cache": {"mode": "exact", "views": 8, "dir": str(fs / "cache")}})
    assert main(["cache", _config(tmp_path, raw)]) == 2
    err = _one_error_line(capsys)
    assert f"cannot write {fs / 'cache'}/rnd-exact-" in err and ": No space left on device (about " in err
    assert "kB needed, 8.2 kB free); free space or set method.cache.dir to a folder with room" in err
    assert list((fs / "cache").glob("*.sskc")) == [] and _leftovers(fs) == []


def test_real_full_disk_decoded_image_cache_warns_and_trains(tmp_path, small_fs, monkeypatch, capsys):
    fs = small_fs(1 << 20)
    _fill(fs)
    monkeypatch.setenv("SSKT_CACHE_DIR", str(fs / "cache"))
    for split in ("train", "test"):
        for k, c in enumerate(("cat", "dog")):
            _pngs(tmp_path / "images" / split / c, 4, shade=2 * k + (split == "test"))  # no test image in training
    raw = tiny_config(tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "images"), "per_class": 4},
                      train={"batch_size": 4})
    assert main(["train", _config(tmp_path, raw)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"sskt: warning: cannot write {fs / 'cache'}/decoded/")
    assert "No space left on device" in warnings[0] and "going on without the decoded-image cache" in warnings[0]
    assert (tmp_path / "run" / "result.json").is_file()
    assert [p.name for p in fs.rglob("*") if p.is_file()] == ["filler"]


def test_real_full_disk_export(tmp_path, small_fs, capsys):
    pytest.importorskip("onnx")
    assert main(["train", _config(tmp_path, tiny_config(tmp_path))]) == 0
    capsys.readouterr()
    fs = small_fs(1 << 20)  # the ONNX model is about 1.1 MB
    out = fs / "m.onnx"
    out.write_bytes(b"the previous export")
    assert main(["export", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), str(out)]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"sskt: error: cannot write {out}: No space left on device (about 1.")
    assert err.endswith("free space or export to another path, then run the same command again")
    assert out.read_bytes() == b"the previous export" and not (fs / "m.onnx.md").exists() and _leftovers(fs) == []
