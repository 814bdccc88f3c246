"""Using a trained model on image files: :func:`predict` (classes of images, top-k) and
:func:`evaluate_folder` (accuracy, per-class accuracy and the confusion matrix on ``DATA_DIR/<class>/``).

Images are decoded as in training (:func:`sskt.data.images.read_image`: upright, RGB, shorter side to the
model's input size, centre square) whatever their size or mode, in batches (memory stays flat).

Example:
    >>> import sskt
    >>> rows = sskt.predict("runs/digits-scratch/target.pt", ["photos/"], top_k=3)  # doctest: +SKIP
    >>> rows[0]["class"], rows[0]["probability"], rows[0]["top_k"][1]               # doctest: +SKIP
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from sskt.data.images import IMAGE_SUFFIXES, is_image_file
from sskt.engine.model_file import LoadedModel, load_model
from sskt.errors import SSKTError
from sskt.io import atomic_json_dump, atomic_write

ModelLike = LoadedModel | str | os.PathLike
_SUFFIXES = ", ".join(sorted(IMAGE_SUFFIXES))
PICTURE_MAX_CLASSES = 60  # beyond this a confusion picture is unreadable: the JSON still has every count


def image_files(items: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named: files as given, folders searched recursively (sorted, hidden files skipped),
    each file once. A missing path or a folder without images is one clear error."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    found: dict[Path, None] = {}
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if is_image_file(f) and not _hidden(f, p))
            if not inside:
                raise SSKTError(f"{p} holds no image files ({_SUFFIXES}); check the folder")
            found.update(dict.fromkeys(inside))
        elif p.is_file():
            found[p] = None
        else:
            raise SSKTError(f"image not found: {p}; check the path")
    if not found:
        raise SSKTError("no images given; name image files or folders")
    return list(found)


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def _as_model(model: ModelLike) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def _batches(model: LoadedModel, files: list[Path], batch_size: int) -> Iterator[Tensor]:
    """The probabilities of ``files``, a batch at a time."""
    if batch_size < 1:
        raise SSKTError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(files), batch_size):
        yield model.probabilities(model.preprocess(files[start:start + batch_size]))


def predict(model: ModelLike, images: str | os.PathLike | Sequence[str | os.PathLike], top_k: int = 3,
            batch_size: int = 64) -> list[dict[str, Any]]:
    """The class of each image: one dict per file, in order, with ``path``, ``class``, ``probability`` and
    ``top_k`` (the ``top_k`` most probable classes, ``[{"class", "probability"}, ...]``, most probable first).

    ``model`` is a :class:`~sskt.engine.model_file.LoadedModel` or a path :func:`sskt.load_model` reads;
    ``images`` are files or folders (searched recursively). Probabilities are a softmax for a single-label
    model and a sigmoid per class for a multi-label one, whose rows also list ``labels``: every class at
    probability 0.5 or more.
    """
    model = _as_model(model)
    if top_k < 1:
        raise SSKTError(f"top-k must be at least 1, got {top_k}; ask for 1 or more classes")
    files = image_files(images)
    model.check_image_input()  # before any decoding
    k = min(top_k, model.num_classes)
    names = model.labels
    rows: list[dict[str, Any]] = []
    done = 0
    for probs in _batches(model, files, batch_size):
        values, indices = probs.topk(k, dim=1)
        for p, v, i in zip(probs, values.tolist(), indices.tolist()):
            row: dict[str, Any] = {"path": str(files[done]), "class": names[i[0]], "probability": v[0],
                                   "top_k": [{"class": names[c], "probability": pv} for c, pv in zip(i, v)]}
            if model.multilabel:
                row["labels"] = [names[c] for c in (p >= 0.5).nonzero().flatten().tolist()]
            rows.append(row)
            done += 1
    return rows


def write_predictions_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """``path,class,probability,top2_class,top2_probability,...`` (one line per image; a multi-label model's
    rows end with ``labels``, its classes at 0.5 or more, ``;``-separated), written atomically."""
    k = max((len(r["top_k"]) for r in rows), default=1)
    multilabel = any("labels" in r for r in rows)
    header = ["path", "class", "probability"]
    header += [f"top{j}_{w}" for j in range(2, k + 1) for w in ("class", "probability")]
    header += ["labels"] if multilabel else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in rows:
        rest = [x for t in r["top_k"][1:] for x in (t["class"], f"{t['probability']:.6f}")]
        labels = [";".join(r["labels"])] if multilabel else []
        writer.writerow([r["path"], r["class"], f"{r['probability']:.6f}", *rest, *labels])
    return _write(path, buf.getvalue().encode())


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """``obj`` as indented JSON, written atomically; an unwritable path is one clear error."""
    try:
        return atomic_json_dump(obj, path)
    except OSError as err:
        raise SSKTError(f"cannot write {path} ({err.strerror or err}); choose a writable file path") from None


def _write(path: str | os.PathLike, data: bytes) -> Path:
    if Path(path).is_dir():
        raise SSKTError(f"{path} is a folder; give a file name")
    try:
        return atomic_write(path, lambda fh: fh.write(data))
    except OSError as err:
        raise SSKTError(f"cannot write {path} ({err.strerror or err}); choose a writable file path") from None


def class_folders(model: LoadedModel, data_dir: str | os.PathLike) -> tuple[Path, dict[str, list[Path]]]:
    """The folder holding the class folders (``data_dir``, or its ``test/``) and the images of each class,
    matched to the model's class names (fewer classes than the model's is fine, an unknown one is an error)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise SSKTError(f"data folder not found: {root}; give a folder of class folders (DATA_DIR/<class>/<image>)")
    if model.classes is None:
        raise SSKTError(f"{model.path.name} records no class names, so class folders cannot be matched to its "
                        f"outputs; export it again from its training checkpoint (sskt export last.ckpt model.pt)")
    known = set(model.classes)

    def subfolders(d: Path) -> list[Path]:
        return sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))

    folders = subfolders(root)
    if (root / "test").is_dir() and "test" not in known and subfolders(root / "test"):
        root = root / "test"  # a dataset root with train/ and test/ splits: score on the test split
        folders = subfolders(root)
    if not folders:
        raise SSKTError(f"{root} has no class folders; evaluate needs DATA_DIR/<class>/<image> (to label images "
                        f"without known classes, use sskt predict)")
    unknown = [c.name for c in folders if c.name not in known]
    if unknown:
        some = ", ".join(model.classes[:12]) + (", ..." if len(model.classes) > 12 else "")
        raise SSKTError(f"class folder(s) {', '.join(unknown[:5])} under {root} are not classes of "
                        f"{model.path.name} (it knows {some}); rename or remove them")
    images = {c.name: sorted(f for f in c.rglob("*") if is_image_file(f) and not _hidden(f, c)) for c in folders}
    if not any(images.values()):
        raise SSKTError(f"the class folders under {root} hold no image files ({_SUFFIXES}); check the folder")
    return root, {name: files for name, files in images.items() if files}


def evaluate_folder(model: ModelLike, data_dir: str | os.PathLike, batch_size: int = 64) -> dict[str, Any]:
    """Score a single-label model on the images of ``data_dir/<class>/`` (or ``data_dir/test/<class>/``).

    Returns ``model``, ``data``, ``images``, ``accuracy`` and ``macro_accuracy`` (the mean of the per-class
    accuracies, in %), ``per_class`` (``{class: {"images", "correct", "accuracy"}}``) and
    ``confusion_matrix``: ``{"labels", "counts"}``, rows the true class, columns the predicted one, over the
    classes that occur as either (torchmetrics' ``MulticlassConfusionMatrix``).
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    model = _as_model(model)
    if model.multilabel:
        raise SSKTError(f"{model.path.name} is multi-label; class folders give one class per image. Score it "
                        f"by mAP on its training checkpoint: sskt evaluate last.ckpt")
    model.check_image_input()
    root, by_class = class_folders(model, data_dir)
    classes: list[str] = model.classes  # type: ignore[assignment]  (class_folders checked it)
    files = [f for fs in by_class.values() for f in fs]
    target = torch.tensor([classes.index(c) for c, fs in by_class.items() for _ in fs])
    preds = torch.cat([p.argmax(1) for p in _batches(model, files, batch_size)])
    matrix = MulticlassConfusionMatrix(num_classes=model.num_classes)
    matrix.update(preds, target)
    counts = matrix.compute().long()
    correct = counts.diagonal()
    per_class = {}
    for name in by_class:
        i = classes.index(name)
        n = int(counts[i].sum())
        per_class[name] = {"images": n, "correct": int(correct[i]), "accuracy": 100.0 * int(correct[i]) / n}
    shown = sorted(set(target.tolist()) | set(preds.tolist()))
    return {"model": str(model.path), "data": str(root), "images": len(files),
            "accuracy": 100.0 * int(correct.sum()) / len(files),
            "macro_accuracy": sum(c["accuracy"] for c in per_class.values()) / len(per_class),
            "per_class": per_class,
            "confusion_matrix": {"labels": [classes[i] for i in shown], "counts": counts[shown][:, shown].tolist()}}


def confusion_picture(result: dict[str, Any], path: str | os.PathLike, dpi: int = 160) -> Path:
    """A PNG of :func:`evaluate_folder`'s confusion matrix: counts in the cells, true classes down,
    predicted classes across, the accuracy in the title."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    labels = [_short(c) for c in result["confusion_matrix"]["labels"]]
    counts = torch.tensor(result["confusion_matrix"]["counts"])
    n = len(labels)
    if n > PICTURE_MAX_CLASSES:
        raise SSKTError(f"{n} classes are too many for a readable confusion picture; use --json for the counts")
    side = min(max(4.5, 0.45 * n + 2.5), 28.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        im = ax.imshow(counts.numpy(), cmap="Blues", vmin=0)
        ax.set_xticks(range(n), labels, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                      fontsize=9)
        ax.set_yticks(range(n), labels, fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        top = float(counts.max()) if counts.numel() else 0.0
        for (i, j), value in zip(((i, j) for i in range(n) for j in range(n)), counts.flatten().tolist()):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8 if n > 15 else 10,
                        color="white" if value > top / 2 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
        ax.set_title(f"{Path(result['model']).name} on {Path(result['data']).name}/\naccuracy "
                     f"{result['accuracy']:.1f}%, macro {result['macro_accuracy']:.1f}% ({result['images']} images)",
                     fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return _write(path, buf.getvalue())


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def default_picture_path(model_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Where the confusion picture goes: ``out`` if it names a ``.png``, else ``out/<model>.confusion.png``,
    else beside the model (``<model>.confusion.png``)."""
    model_path = Path(model_path)
    name = f"{model_path.name}.confusion.png"
    if out is None:
        return model_path.with_name(name)
    out = Path(out).expanduser()
    return out if out.suffix.lower() == ".png" else out / name
