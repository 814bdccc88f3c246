"""sskt: transfer what pretrained networks know into a new target network.

Example:
    >>> import sskt
    >>> cfg = sskt.ExperimentConfig.from_yaml("configs/cifar10_r20_sskt.yaml", ["train.epochs=1"])  # doctest: +SKIP
    >>> result = sskt.fit(cfg)  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names -> defining module, imported on first use so that `import sskt.losses` stays light
# (Lightning is only loaded when training is asked for).
_LAZY = {
    "ExperimentConfig": "sskt.config", "TrainConfig": "sskt.config", "DataConfig": "sskt.config",
    "TargetConfig": "sskt.config", "METHODS": "sskt.methods", "RunResult": "sskt.engine.run",
    "fit": "sskt.engine.run", "evaluate": "sskt.engine.run", "export": "sskt.engine.run",
    "load_trained": "sskt.engine.run", "load_network": "sskt.models.weights", "SSKTError": "sskt.errors",
    "distill": "sskt.experiments.distill",
    "load_model": "sskt.engine.model_file", "LoadedModel": "sskt.engine.model_file",
    "predict": "sskt.experiments.predict", "evaluate_folder": "sskt.experiments.predict",
    "register_model": "sskt.models.factory", "register_dataset": "sskt.data.custom", "image_splits": "sskt.data.custom",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sskt' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (loaded on first use, so not yet in the module's namespace) and what is loaded already."""
    return sorted({*__all__, *globals()})
