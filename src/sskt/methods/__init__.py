"""Training methods, one file each; importing this package registers them all."""
from sskt.methods import cluster_transfer, dml, finetune, kd, maxl, pretext, scratch, sskt  # noqa: F401  (registration)
from sskt.config import TargetConfig
from sskt.methods.base import METHODS, BuildContext, Method, StepOutput, build_method

__all__ = ["METHODS", "BuildContext", "Method", "StepOutput", "TargetConfig", "build_method"]
