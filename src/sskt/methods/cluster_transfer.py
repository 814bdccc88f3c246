"""Cluster-based knowledge transfer (Noroozi et al. 2018): train the target on a teacher's k-means ids.

The teacher (a network file at a layer, or HOG) is loaded when the method is built; its features are
clustered by :meth:`ClusterTransfer.prepare`, once before training (cached on disk); then the target,
of any architecture, is trained from scratch with cross-entropy on the cluster ids of its training
images (k classes). Dataset labels are not used for training; when present they only
give the clusters' NMI. Unlabelled images (``data.unlabeled``) are clustered and learned from like the
labelled ones. Evaluation scores the pseudo-label task: the nearest-centroid cluster of
each test image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from sskt.errors import SSKTError
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, parse_options
from sskt.models.target import TargetNetwork


@dataclass
class ClusterTransferOptions:
    """``teacher``: ``hog``, ``pretrained:<arch>`` (published weights, e.g. ``pretrained:efficientnet_lite0``),
    a training checkpoint, an sskt model file, or a plain state_dict (then ``arch``). ``input_size``: the
    size (px) a network teacher sees the images at. ``layer``: a module of the teacher network (``layer3``; default: the pooled input of its
    classifier); ``spatial``: pool maps to s x s instead of 1 x 1. ``k``: clusters; ``pca_dim``: PCA-whiten
    to this many dimensions (after L2, then L2 again). ``hog_cell``: HOG cell size in px (4 for 8 px
    images). ``cache_dir``: where features and assignments are cached (default
    ``$SSKT_CACHE_DIR/clusters``)."""

    teacher: str = ""
    arch: str | None = None
    layer: str | None = None
    spatial: int | None = None
    k: int = 100
    pca_dim: int | None = None
    seed: int = 0
    niter: int = 50
    hog_cell: int = 8
    input_size: int | None = None
    cache_dir: str | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if not self.teacher:
            raise SSKTError("method cluster-transfer needs method.teacher (hog or a model/checkpoint file)")
        if self.k < 2:
            raise SSKTError(f"k must be >= 2, got {self.k}")

    def teacher_spec(self) -> dict[str, Any]:
        """How to rebuild the teacher (stored with the centroids for the ``clustered`` source)."""
        return {"teacher": self.teacher, "arch": self.arch, "layer": self.layer, "spatial": self.spatial,
                "hog_cell": self.hog_cell, "input_size": self.input_size}


def cluster_teacher(opts: ClusterTransferOptions, ctx: BuildContext, in_chans: int) -> Any:
    """The options' feature teacher (HOG, or a network file: read, not run), once ``ctx`` is checked."""
    from sskt.cluster.teacher import load_teacher

    if ctx.train_data is None:
        raise SSKTError("cluster-transfer needs the training images")
    if opts.k > len(ctx.train_data):
        raise SSKTError(f"k={opts.k} is more than the {len(ctx.train_data)} training images; lower method.k")
    return load_teacher(opts.teacher, opts.arch, opts.layer, opts.spatial, in_chans, opts.trust_pickle,
                        opts.hog_cell, opts.input_size)


def cluster_for(opts: ClusterTransferOptions, ctx: BuildContext, in_chans: int, teacher: Any = None):
    """Cluster ``ctx``'s training images (and assign its test images) with the options' teacher (loaded
    here unless given)."""
    from sskt.cluster.pipeline import cluster_images, default_cache_dir

    if teacher is None:
        teacher = cluster_teacher(opts, ctx, in_chans)
    test = ctx.test_data
    labelled = not ctx.multilabel
    return cluster_images(
        teacher, ctx.train_data.images, opts.k, test.images if test is not None else None,
        ctx.train_data.targets if labelled else None, test.targets if (labelled and test is not None) else None,
        opts.pca_dim, opts.seed, opts.niter, opts.cache_dir or default_cache_dir())


@METHODS.register("cluster-transfer")
class ClusterTransfer(Method):
    """The target (k outputs) learns the teacher's cluster id of each training image.

    The pseudo-labels come from :meth:`prepare` (or are given); a rebuilt run (evaluate, export) has none."""

    options_class = ClusterTransferOptions
    learns_from_unlabeled = True
    uses_labels = False  # the cluster ids are the labels

    def __init__(self, target: TargetNetwork, train_labels: Tensor | None = None, test_labels: Tensor | None = None,
                 summary: dict[str, Any] | None = None) -> None:
        super().__init__(target)
        # Not persistent: made (from the cache) by prepare(), never stored in checkpoints.
        self.register_buffer("pseudo_train", train_labels.long() if train_labels is not None else None,
                             persistent=False)
        self.register_buffer("pseudo_test", test_labels.long() if test_labels is not None else None,
                             persistent=False)
        self.summary = summary or {}
        self._to_cluster: tuple | None = None  # (options, teacher) until prepare() clusters

    @classmethod
    def from_config(cls, options: dict, ctx: BuildContext) -> "ClusterTransfer":
        opts = parse_options(ClusterTransferOptions, options)
        teacher = cluster_teacher(opts, ctx, ctx.in_chans)  # before the target: the order random weights are drawn in
        method = cls(ctx.build_target(num_classes=opts.k), summary={"teacher": opts.teacher_spec(), "k": opts.k})
        method._to_cluster = (opts, teacher)
        return method

    def prepare(self, ctx: BuildContext) -> list[str]:
        """Cluster the teacher's features of ``ctx``'s training images (or read them from the cache): the
        pseudo-labels of the training and test images."""
        if self._to_cluster is None:
            return []
        opts, teacher = self._to_cluster
        clustering = cluster_for(opts, ctx, ctx.in_chans, teacher)
        device = next(self.target.parameters()).device
        self.pseudo_train = clustering.train_labels.long().to(device)
        self.pseudo_test = clustering.test_labels.long().to(device) if clustering.test_labels is not None else None
        self.summary = {**self.summary, **clustering.summary()}
        self._to_cluster = None
        return [f"{len(clustering.train_labels)} training images in {opts.k} clusters"
                f"{' (from the cache)' if clustering.cached else ''}"]

    def training_step(self, batch: dict[str, Tensor]) -> StepOutput:
        if self.pseudo_train is None:
            raise SSKTError("cluster-transfer has no pseudo-labels to train on: call prepare(ctx) first")
        labels = self.pseudo_train[batch["index"]]
        logits = self.target(batch["image"])
        return StepOutput(logits, {"cluster": F.cross_entropy(logits, labels)}, targets=labels)

    def evaluation_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self.pseudo_test is None:
            raise SSKTError("cluster-transfer has no test pseudo-labels to evaluate")
        return self.target(batch["image"]), self.pseudo_test[batch["index"]]

    def extra_results(self) -> dict[str, Any]:
        return {"clusters": self.summary}
