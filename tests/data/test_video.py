"""Video data (UCF101/HMDB51 layouts, sampling, moving CIFAR), 3D targets and 2D-source frame paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sskt.data.moving_cifar import DEFAULT_MOTIONS, moving_cifar
from sskt.data.video import VideoClipDataset, average_clip_scores
from sskt.data.video_reader import eval_clip_indices, train_clip_indices
from sskt.data.video_splits import hmdb51_split, ucf101_split
from sskt.errors import SSKTError
from sskt.models.resnet3d import VIDEO_MODELS, create_video_model
from sskt.sources.frames import average_frame_outputs, centre_frame, clip_source_logits, sample_frames

STEP = 20  # frame i of a fixture video is a flat image of grey level STEP * i


def _frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (20, 16), (STEP * i,) * 3).save(folder / f"image_{i + 1:05d}.jpg")


def _frame_ids(clip: torch.Tensor) -> list[int]:
    """Recover which source frames a (C, T, H, W) fixture clip holds (JPEG is near-lossless on flat images)."""
    return (clip.float().mean((0, 2, 3)) / STEP).round().long().tolist()


@pytest.fixture()
def ucf(tmp_path: Path) -> tuple[Path, Path]:
    root, lists = tmp_path / "jpg", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 Basketball\n")
    videos = {  # video -> (class, frames, subset)
        "v_ApplyEyeMakeup_g08_c01": ("ApplyEyeMakeup", 12, "train"),
        "v_Archery_g08_c01": ("Archery", 10, "train"),
        "v_Basketball_g08_c01": ("Basketball", 3, "train"),  # shorter than a clip: loop padding
        "v_Archery_g01_c01": ("Archery", 12, "test"),
        "v_Basketball_g01_c01": ("Basketball", 8, "test"),
    }
    train, test = [], []
    for name, (cls, n, subset) in videos.items():
        _frames(root / cls / name, n)
        if subset == "train":
            train.append(f"{cls}/{name}.avi {['ApplyEyeMakeup', 'Archery', 'Basketball'].index(cls) + 1}")
        else:
            test.append(f"{cls}/{name}.avi")
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return root, lists


def test_ucf101_layout_labels_and_split(ucf: tuple[Path, Path]) -> None:
    root, lists = ucf
    train = ucf101_split(root, lists, split=1, subset="train")
    test = ucf101_split(root, lists, split=1, subset="test")
    assert train.classes == ["ApplyEyeMakeup", "Archery", "Basketball"]
    assert [(e.path.name, e.label) for e in train.entries] == [
        ("v_ApplyEyeMakeup_g08_c01", 0), ("v_Archery_g08_c01", 1), ("v_Basketball_g08_c01", 2)]
    assert [(e.path.name, e.label) for e in test.entries] == [("v_Archery_g01_c01", 1), ("v_Basketball_g01_c01", 2)]
    # a listed video that is not on disk is an error naming it, unless skipped
    with open(lists / "testlist01.txt", "a") as f:
        f.write("Archery/v_Archery_g02_c01.avi\n")
    with pytest.raises(SSKTError, match="v_Archery_g02_c01"):
        ucf101_split(root, lists, 1, "test")
    assert len(ucf101_split(root, lists, 1, "test", missing="skip")) == 2


def test_clip_sampling_train_and_test(ucf: tuple[Path, Path]) -> None:
    root, lists = ucf
    torch.manual_seed(0)
    train = VideoClipDataset(ucf101_split(root, lists, 1, "train"), train=True, clip_len=4, size=None, crop=8)
    item = train[0]
    assert item["image"].shape == (3, 4, 8, 8) and item["image"].dtype == torch.uint8 and item["target"] == 0
    ids = _frame_ids(item["image"])
    assert ids == list(range(ids[0], ids[0] + 4)) and 0 <= ids[0] <= 8  # consecutive, inside the video
    assert _frame_ids(train[2]["image"]) == [0, 1, 2, 0]  # 3-frame video, loop-padded to 4

    test = VideoClipDataset(ucf101_split(root, lists, 1, "test"), train=False, clip_len=4, num_clips=3,
                            size=8, crop=8)
    assert len(test) == 6  # 2 videos x 3 clips
    clips = [test[i] for i in range(3)]
    assert [c["video"] for c in clips] == [0, 0, 0] and clips[0]["target"] == 1
    # 12 frames, 3 clips of 4: starts evenly spaced over 0..8
    assert [_frame_ids(c["image"])[0] for c in clips] == [0, 4, 8]
    assert clips[0]["image"].shape == (3, 4, 8, 8)  # 16x20 -> shorter side 8 -> centre crop 8


def test_temporal_index_helpers() -> None:
    assert eval_clip_indices(100, 16, 1) == [list(range(42, 58))]  # one clip: the middle window
    assert eval_clip_indices(5, 4, 2, stride=2) == [[0, 2, 4, 0], [0, 2, 4, 0]]
    g = torch.Generator().manual_seed(0)
    starts = {train_clip_indices(20, 16, generator=g)[0] for _ in range(200)}
    assert starts == set(range(5))  # every valid start is drawn


def test_hmdb51_split_ids(tmp_path: Path) -> None:
    splits, root = tmp_path / "splits", tmp_path / "frames"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (splits / "brush_hair_test_split1.txt").write_text("d.avi 2 \ne.avi 1 \n")
    (splits / "wave_test_split2.txt").write_text("a.avi 2 \n")
    for cls, v in [("wave", "a"), ("wave", "b"), ("wave", "c"), ("brush_hair", "d"), ("brush_hair", "e")]:
        _frames(root / cls / v, 2)
    train = hmdb51_split(root, splits, 1, "train")
    test = hmdb51_split(root, splits, 1, "test")
    assert train.classes == ["brush_hair", "wave"]
    assert sorted((e.path.name, e.label) for e in train.entries) == [("a", 1), ("e", 0)]
    assert sorted((e.path.name, e.label) for e in test.entries) == [("b", 1), ("d", 0)]  # id 0 unused


def test_video_file_through_pyav(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "classInd.txt").write_text("1 Run\n")
    (tmp_path / "lists" / "testlist01.txt").write_text("Run/v_Run_g01_c01.avi\n")
    (tmp_path / "Run").mkdir()
    with av.open(str(tmp_path / "Run" / "v_Run_g01_c01.avi"), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), STEP * i, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    ds = VideoClipDataset(ucf101_split(tmp_path, tmp_path / "lists", 1, "test"), train=False,
                          clip_len=4, num_clips=2, size=16, crop=16)
    assert [_frame_ids(ds[k]["image"]) for k in range(2)] == [[0, 1, 2, 3], [6, 7, 8, 9]]


def test_average_clip_scores_per_video() -> None:
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = average_clip_scores(scores, torch.tensor([0, 0, 1]), num_videos=2)
    assert out.tolist() == [[2.0, 1.0], [5.0, 5.0]]


def test_resnet3d_18_output_and_stage_shapes() -> None:
    torch.manual_seed(0)
    n_params = {}
    for shortcut in ("A", "B"):
        net = create_video_model("resnet3d_18", num_classes=7, shortcut=shortcut).eval()
        n_params[shortcut] = sum(p.numel() for p in net.parameters())
        shapes = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            getattr(net, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        fc_in = []
        net.fc.register_forward_hook(lambda m, i, o: fc_in.append(i[0].shape))
        x = torch.randn(2, 3, 8, 32, 32)
        with torch.no_grad():
            y = net(x)
        assert y.shape == (2, 7) and torch.isfinite(y).all()
        # conv1 stride (1,2,2) + max-pool 2 -> layer1 at T/2, H/4; each later stage halves T, H, W
        assert shapes == {"layer1": (2, 64, 4, 8, 8), "layer2": (2, 128, 2, 4, 4),
                          "layer3": (2, 256, 1, 2, 2), "layer4": (2, 512, 1, 1, 1)}
        assert fc_in == [(2, 512)]
    # shortcut A has no parameters, B adds 1x1x1 convolutions
    assert n_params["B"] > n_params["A"] and 33.0e6 < n_params["A"] < 33.1e6


def test_torchvision_video_wrappers_build_with_num_classes() -> None:
    assert set(VIDEO_MODELS) >= {"resnet3d_18", "resnet3d_34", "r3d_18", "mc3_18", "r2plus1d_18"}
    net = create_video_model("mc3_18", num_classes=5).eval()
    assert all(hasattr(net, f"layer{i}") for i in range(1, 5)) and net.fc.out_features == 5
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 4, 32, 32)).shape == (1, 5)
    with pytest.raises(SSKTError, match="r2plus1d_18"):
        create_video_model("c3d", 5)


def test_centre_and_multi_frame_source_inputs() -> None:
    clips = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4) + torch.tensor([0.0, 100.0]).view(2, 1, 1, 1, 1)
    c = centre_frame(clips)
    assert c.shape == (2, 3, 4, 4) and c[0].unique().tolist() == [4.0] and c[1].unique().tolist() == [104.0]
    f = sample_frames(clips, 4)
    assert f.shape == (8, 3, 4, 4)
    # clip-major: clip 0's frames 1, 3, 5, 7 then clip 1's
    assert f[:, 0, 0, 0].tolist() == [1.0, 3.0, 5.0, 7.0, 101.0, 103.0, 105.0, 107.0]
    assert torch.equal(sample_frames(clips, 1), centre_frame(clips))

    def source(x: torch.Tensor) -> torch.Tensor:  # a toy "2D source": logits from the grey level
        return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)

    assert clip_source_logits(source, clips).tolist() == [[4.0, -4.0], [104.0, -104.0]]
    assert clip_source_logits(source, clips, frames=4).tolist() == [[4.0, -4.0], [104.0, -104.0]]
    logits = torch.randn(6, 5)
    expect = logits.softmax(-1).view(2, 3, 5).mean(1)
    assert torch.allclose(average_frame_outputs(logits, 3, "probs").softmax(-1), expect, atol=1e-6)
    assert torch.allclose(average_frame_outputs(logits, 3), logits.view(2, 3, 5).mean(1))


def _centroids(clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame mass and centroid (x, y) of a (3, T, H, W) clip on a black canvas."""
    m = clip[0].float()
    ys, xs = torch.meshgrid(torch.arange(m.shape[1]).float(), torch.arange(m.shape[2]).float(), indexing="ij")
    mass = m.sum((1, 2))
    return mass, (m * xs).sum((1, 2)) / mass, (m * ys).sum((1, 2)) / mass


def test_moving_cifar_motion_is_the_class() -> None:
    square = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)  # a bright square as the "image"
    m = moving_cifar(square, n=60, seed=0, canvas=64, frames=8)
    assert m.clips.shape == (60, 3, 8, 64, 64) and m.clips.dtype == torch.uint8
    assert set(m.labels.tolist()) == set(range(10))
    seen = set()
    for clip, label in zip(m.clips, m.labels.tolist()):
        name = DEFAULT_MOTIONS[label]
        mass, x, y = _centroids(clip)
        dx, dy = x.diff(), y.diff()
        if name == "right":
            assert (dx > 0).all() and (dy == 0).all()
        elif name == "up":
            assert (dy < 0).all() and (dx == 0).all()
        elif name == "up-right":
            assert (dx > 0).all() and (dy < 0).all()
        elif name == "zoom-in":
            assert (mass.diff() > 0).all()
        elif name == "zoom-out":
            assert (mass.diff() < 0).all()
        elif name == "static-jitter":
            assert (x - x[0]).abs().max() <= 4 and (y - y[0]).abs().max() <= 4
        elif name == "circle":  # constant distance from the canvas centre, angle sweeping round
            r = ((x - 31.5) ** 2 + (y - 31.5) ** 2).sqrt()
            assert r.max() - r.min() < 2 and r.min() > 4
        else:
            continue
        seen.add(name)
        if not name.startswith("zoom"):  # full-size frames are exact copies: the whole square shows
            assert (mass == 255 * 32 * 32).all()
    assert seen == {"right", "up", "up-right", "zoom-in", "zoom-out", "static-jitter", "circle"}
    # seeded, and a CIFAR-size input at a 48 px canvas works too
    assert torch.equal(moving_cifar(square, n=60, seed=0, canvas=64, frames=8).clips, m.clips)
    small = moving_cifar(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8), n=3, canvas=48, frames=16)
    assert small.clips.shape == (3, 3, 16, 48, 48) and small.image_index.max() < 5
