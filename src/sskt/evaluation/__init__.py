"""Evaluation protocols for frozen representations: linear probes and weighted k-NN."""
from sskt.evaluation.probes import ProbeResult, knn_accuracy, knn_predict, linear_probe, probe_layers

__all__ = ["ProbeResult", "knn_accuracy", "knn_predict", "linear_probe", "probe_layers"]
