"""sskt: transfer what pretrained networks know into a new target network.

Example:
    >>> import sskt
    >>> cfg = sskt.ExperimentConfig.from_yaml("configs/cifar10_r20_sskt.yaml", ["train.epochs=1"])  # doctest: +SKIP
    >>> result = sskt.fit(cfg)  # doctest: +SKIP
"""
__version__ = "0.1.0"

from sskt.config import ExperimentConfig, TrainConfig  # noqa: E402
from sskt.data.datasets import DataConfig  # noqa: E402
from sskt.engine.run import RunResult, evaluate, export, fit, load_trained  # noqa: E402
from sskt.errors import SSKTError  # noqa: E402
from sskt.methods.base import METHODS, TargetConfig  # noqa: E402
from sskt.sources.loading import load_network  # noqa: E402

__all__ = ["ExperimentConfig", "TrainConfig", "DataConfig", "TargetConfig", "RunResult", "fit", "evaluate", "export",
           "load_trained", "load_network", "SSKTError", "METHODS", "__version__"]
