"""Datasets decoded to tensors, labelled subsets and batch augmentation."""
from sskt.data.augment import BatchAugment, apply_view, to_float
from sskt.config import DataConfig
from sskt.data.datasets import DATASETS, load_data, per_class_indices
from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset, collate_batch
from sskt.data import extra_datasets as _extra_datasets  # noqa: F401  registers multi-label and video datasets

__all__ = ["BatchAugment", "apply_view", "to_float", "DATASETS", "DataConfig", "load_data", "per_class_indices",
           "ImageSplits", "ImageTensorDataset", "collate_batch"]
