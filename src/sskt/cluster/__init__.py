"""Cluster-based knowledge transfer (Noroozi et al. 2018): features, HOG, k-means pseudo-labels."""
from sskt.cluster.features import PCAWhitening, extract_features, extract_multi, l2_normalize
from sskt.cluster.hog import hog_dim, hog_features
from sskt.cluster.kmeans import (
    CentroidClassifier,
    ClusterStats,
    KMeansResult,
    assign,
    centroid_logits,
    centroid_soft_labels,
    cluster_stats,
    kmeans,
)

__all__ = [
    "PCAWhitening", "extract_features", "extract_multi", "l2_normalize", "hog_dim", "hog_features",
    "CentroidClassifier", "ClusterStats", "KMeansResult", "assign", "centroid_logits", "centroid_soft_labels",
    "cluster_stats", "kmeans",
]
