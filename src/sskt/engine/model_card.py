"""The model card written beside every exported model: architecture, classes, input statistics, how to
load the file, the method and sources that trained it, and its test accuracy (from the checkpoint).

It opens with the YAML front matter the Hugging Face Hub reads (library, tags, task, dataset, the test
score as a ``model-index`` entry), so the export's folder can be pushed to the Hub as it is. It is written
with ``huggingface_hub.ModelCardData`` (installed with timm) where that imports, else by hand in the
same format; neither touches the network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
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


def _shown(ckpt: dict, metric: str) -> dict:
    """The run's record as result.json shows it (the checkpoint holds the engine's, epochs from 0)."""
    engine_history = list((ckpt.get("sskt") or {}).get("history") or [])
    return reader_record({"history": engine_history, **best_by_validation(engine_history, metric)})


def _accuracy_lines(ckpt: dict, config: dict, metric: str) -> list[str]:
    shown = _shown(ckpt, metric)
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


def _dataset(config: dict) -> str | None:
    """The training data's name: the dataset's, or for a folder or CSV file of images, that one's."""
    data = config.get("data") or {}
    name = data.get("dataset")
    if name in ("imagefolder", "multilabel-csv") and data.get("root"):
        root = Path(str(data["root"]))
        return root.stem if root.suffix.lower() == ".csv" else root.name
    return str(name) if name else None


def front_matter(ckpt: dict, meta: dict, filename: str) -> dict[str, Any]:
    """The Hub's card metadata of an export: library_name, tags, pipeline_tag, datasets, metrics and a
    ``model-index`` entry with the final test score (as result.json's ``final``; none before any test)."""
    config = ckpt.get("sskt_config") or {}
    method = dict(config.get("method") or {})
    task = "video-classification" if len(meta["input_shape"]) == 4 else "image-classification"
    multilabel = bool(meta.get("multilabel"))
    metric = "map" if multilabel else "acc"
    metric_type = "mAP" if multilabel else "accuracy"
    # Knowledge distillation only where something taught the target (sources, a teacher, peers).
    taught = any(method.get(k) for k in ("sources", "teacher", "peers"))
    tags = [task, *(["knowledge-distillation"] if taught else []), "sskt"]
    name = method.get("name")
    if name and name not in tags:
        tags.append(str(name))
    if multilabel:
        tags.append("multi-label-classification")
    dataset = _dataset(config)
    scored = [h for h in _shown(ckpt, metric)["history"] if f"test_{metric}" in h]
    final = float(scored[-1][f"test_{metric}"]) if scored else None
    card: dict[str, Any] = {"library_name": "sskt", "tags": tags, "pipeline_tag": task}
    if dataset:
        card["datasets"] = [dataset]
    card["metrics"] = [metric_type]
    if final is not None:
        card["model-index"] = [{"name": str(config.get("name") or filename), "results": [{
            "task": {"type": task},
            "dataset": {"name": dataset or "test split", "type": dataset or "unknown"},
            "metrics": [{"type": metric_type, "value": final,
                         "name": f"Test {'mAP' if multilabel else 'top-1 accuracy'} (%)"}]}]}]
    return card


def _front_matter_yaml(card: dict[str, Any]) -> str:
    """The front matter's YAML, by huggingface_hub's ModelCardData where it imports (the Hub's own writer)."""
    try:
        from huggingface_hub import EvalResult, ModelCardData
    except ImportError:  # not installed: the same keys, by hand
        return yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
    fields = {k: v for k, v in card.items() if k != "model-index"}
    for entry in card.get("model-index", []):
        result = entry["results"][0]
        fields["model_name"] = entry["name"]
        fields["eval_results"] = [EvalResult(
            task_type=result["task"]["type"], dataset_name=result["dataset"]["name"],
            dataset_type=result["dataset"]["type"], metric_type=m["type"], metric_value=m["value"],
            metric_name=m["name"]) for m in result["metrics"]]
    return ModelCardData(**fields).to_yaml()


def model_card(ckpt: dict, net: nn.Module, meta: dict, filename: str, fmt: str) -> str:
    """The Markdown model card written beside an export, opening with the Hub's YAML front matter."""
    import sskt

    config = ckpt.get("sskt_config") or {}
    metric = "map" if meta.get("multilabel") else "acc"
    shape = " x ".join(str(s) for s in meta["input_shape"])
    layout = "N x C x T x H x W" if len(meta["input_shape"]) == 4 else "N x C x H x W"
    classes = meta["classes"]
    activation = "multi-label: apply a sigmoid" if meta.get("multilabel") else "single-label: apply a softmax"
    how = {"sskt": "`sskt.load_model(path)` (eval mode, images in [0, 1], `.classes`), or as a source's `checkpoint:`",
           "pt2": "`torch.export.load(path).module()` or `sskt.load_model(path)`",
           "torchscript": "`torch.jit.load(path)`",
           "onnx": "onnxruntime: input `images`, output `logits`, any batch size",
           "safetensors": "`sskt.load_model(path)` (metadata under the `sskt` key)"}[fmt]
    lines = [
        "---",
        _front_matter_yaml(front_matter(ckpt, meta, filename)).rstrip("\n"),
        "---",
        "",
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
