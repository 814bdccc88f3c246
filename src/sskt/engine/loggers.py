"""Experiment loggers chosen by the config: CSV always, TensorBoard by default, any Lightning logger by name.

``train.loggers`` lists more loggers, each a short name (``wandb``, ``mlflow``, ``comet``, ``neptune``,
``tensorboard``, ``csv``), a mapping ``{name: wandb, project: my-project, ...}`` whose other keys go to the
logger's constructor, or a ``class_path`` (``{class_path: my_pkg.MyLogger, ...}``) for any
:class:`lightning.pytorch.loggers.Logger`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

from sskt.errors import SSKTError

SHORT_NAMES = {
    "csv": "CSVLogger", "tensorboard": "TensorBoardLogger", "wandb": "WandbLogger", "mlflow": "MLFlowLogger",
    "comet": "CometLogger", "neptune": "NeptuneLogger",
}
# Loggers that write under a folder: given the run's out_dir unless the config says otherwise.
_FOLDER_ARG = {"CSVLogger": "save_dir", "TensorBoardLogger": "save_dir", "WandbLogger": "save_dir"}


def _resolve(spec: Any, where: str) -> tuple[type, dict]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise SSKTError(f"{where}: a logger is a name ({', '.join(SHORT_NAMES)}) or a mapping, got {spec!r}")
    kwargs = dict(spec)
    path = kwargs.pop("class_path", None)
    name = kwargs.pop("name", None) if path is None else None
    if path is None:
        if name not in SHORT_NAMES:
            raise SSKTError(f"{where}: unknown logger {name!r}; known: {', '.join(SHORT_NAMES)} "
                            f"(or class_path: package.module.LoggerClass)")
        path = f"lightning.pytorch.loggers.{SHORT_NAMES[name]}"
    module_name, _, class_name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise SSKTError(f"{where}: cannot import logger {path!r}; check class_path") from None
    return cls, kwargs


def build_loggers(specs: Sequence[Any], out_dir: Path, tensorboard: bool) -> list[Any]:
    """The run's loggers: CSV under ``out_dir/logs`` (sskt reads it), TensorBoard if asked, then ``specs``.

    A new log version per invocation, so a resumed run never overwrites the logs of its first part.
    """
    from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

    loggers: list[Any] = [CSVLogger(out_dir, name="logs")]
    if tensorboard:
        loggers.append(TensorBoardLogger(out_dir, name="tensorboard"))
    for i, spec in enumerate(specs or []):
        where = f"train.loggers.{i}"
        cls, kwargs = _resolve(spec, where)
        if not (isinstance(cls, type) and issubclass(cls, Logger)):
            raise SSKTError(f"{where}: {cls!r} is not a Lightning logger")
        folder = _FOLDER_ARG.get(cls.__name__)
        if folder and folder not in kwargs:
            kwargs[folder] = str(out_dir)
        try:
            loggers.append(cls(**kwargs))
        except ModuleNotFoundError as err:  # Lightning's message names the requirement and the pip command
            missing = f"pip install {err.name}" if err.name else str(err).splitlines()[0]
            raise SSKTError(f"{where}: {cls.__name__} cannot start: {missing}") from None
        except (TypeError, ValueError) as err:
            raise SSKTError(f"{where}: {cls.__name__} does not take these settings: {err}") from None
    return loggers
