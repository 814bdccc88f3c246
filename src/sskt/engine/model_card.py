"""The model card written beside every exported model: architecture, classes, input statistics, how to
load the file, the method and sources that trained it, and its test accuracy (from the checkpoint)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from sskt.engine.history import best_by_validation, reader_record


def _param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _weights(spec: dict) -> str:
    """How a source / teacher / target config names its weights."""
    if spec.get("pretrained"):
        return "published weights" if spec["pretrained"] is True else f"published weights {spec['pretrained']}"
    if spec.get("checkpoint"):
        return f"checkpoint {Path(str(spec['checkpoint'])).name}"
    return ""


def _describe(spec: Any) -> str:
    if isinstance(spec, str):
        return spec if spec in ("hog", "same") else Path(spec).name
    if not isinstance(spec, dict):
        return str(spec)
    parts = [p for p in (spec.get("arch"), _weights(spec), spec.get("kind") if spec.get("kind") not in (None, "model")
                         else None) if p]
    name = spec.get("name", "?")
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _method_lines(config: dict) -> list[str]:
    method = dict(config.get("method") or {})
    lines = [f"- Method: `{method.get('name', '?')}`"]
    for key, label in (("sources", "Sources"), ("peers", "Peers")):
        if method.get(key):
            lines.append(f"- {label}: " + "; ".join(_describe(s) for s in method[key]))
    if method.get("teacher"):
        teacher = _describe(method["teacher"])
        if isinstance(method["teacher"], str) and method.get("arch"):
            teacher += f" ({method['arch']})"
        lines.append(f"- Teacher: {teacher}")
    init = _weights(config.get("target") or {})
    lines.append(f"- Target initialised from: {init or 'random weights'}")
    data = config.get("data") or {}
    if data.get("dataset"):
        labels = f", {data['per_class']} labelled images per class" if data.get("per_class") else ""
        lines.append(f"- Training data: `{data['dataset']}`{labels}")
    return lines


def _accuracy_lines(ckpt: dict, config: dict, metric: str) -> list[str]:
    # The checkpoint holds the engine's history (epochs from 0): shown as result.json shows it.
    engine_history = list((ckpt.get("sskt") or {}).get("history") or [])
    shown = reader_record({"history": engine_history, **best_by_validation(engine_history, metric)})
    key = f"test_{metric}"
    scored = [h for h in shown["history"] if key in h]
    name = "mAP" if metric == "map" else "top-1 accuracy"
    if not scored:
        return [f"- Test {name}: not evaluated yet"]
    last = scored[-1]
    epochs = (config.get("train") or {}).get("epochs")
    of = f" of {epochs}" if epochs else ""
    lines = [f"- Test {name} (final, after epoch {last.get('epoch', 1)}{of}): {last[key]:.2f}%"]
    if shown["best"] is not None:
        lines.append(f"- Test {name} at the best validation score (epoch {shown['best_epoch']}, "
                     f"validation {shown['best_val']:.2f}%): {shown['best']:.2f}%")
    else:
        lines.append("- Best at validation: none (the run had no validation split)")
    return lines


def _fmt_stats(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def model_card(ckpt: dict, net: nn.Module, meta: dict, filename: str, fmt: str) -> str:
    """The Markdown model card written beside an export."""
    import sskt

    config = ckpt.get("sskt_config") or {}
    metric = "map" if meta.get("multilabel") else "acc"
    shape = " x ".join(str(s) for s in meta["input_shape"])
    layout = "N x C x T x H x W" if len(meta["input_shape"]) == 4 else "N x C x H x W"
    classes = meta["classes"]
    activation = "multi-label: apply a sigmoid" if meta.get("multilabel") else "single-label: apply a softmax"
    how = {"sskt": "`sskt.load_model(path)` (eval mode, images in [0, 1], `.classes`), or as a source's `checkpoint:`",
           "torchscript": "`torch.jit.load(path)`",
           "onnx": "onnxruntime: input `images`, output `logits`, any batch size",
           "safetensors": "`sskt.load_model(path)` (metadata under the `sskt` key)"}[fmt]
    lines = [
        f"# Model card: {filename}",
        "",
        f"Target network of the sskt run `{config.get('name', '?')}`, exported as {fmt} "
        f"with sskt {sskt.__version__}.",
        "",
        "## Model",
        f"- Architecture: `{meta['arch']}`",
        f"- Parameters: {_param_count(net):,}",
        f"- Outputs: {meta['num_classes']} logits ({activation})",
        f"- Classes ({meta['num_classes']}): " + (", ".join(str(c) for c in classes) if classes
                                                 else "unnamed (the head's outputs are not the data's classes)"),
        f"- Input: float32 images in [0, 1], {layout}, {shape} per example ({meta['in_chans']} channels)",
        f"- Normalisation (inside the model): mean {_fmt_stats(meta['mean'])}, std {_fmt_stats(meta['std'])}",
        f"- Load with: {how}",
        "",
        "## Training",
        *_method_lines(config),
        f"- Seed: {config.get('seed', '?')}",
        "",
        "## Results",
        *_accuracy_lines(ckpt, config, metric),
        "",
    ]
    return "\n".join(lines)
