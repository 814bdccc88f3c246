"""Targets, heads and feature taps."""
from sskt.models.factory import MODELS, ModelSpec, create_model, model_spec
from sskt.models import resnet3d as _resnet3d  # noqa: F401  registers the 3D video targets in MODELS
from sskt.models.heads import LinearHead, SharedTransferHeads, TransferModule
from sskt.models.taps import FeatureTaps
from sskt.models.target import Features, NormalizedClassifier, TargetNetwork

__all__ = ["MODELS", "ModelSpec", "create_model", "model_spec", "LinearHead", "SharedTransferHeads", "TransferModule", "FeatureTaps",
           "Features", "NormalizedClassifier", "TargetNetwork"]
