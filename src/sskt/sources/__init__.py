"""Frozen source networks: loading, input adaptation, batched inference."""
from sskt.sources.bank import SourceBank
from sskt.models.weights import LoadedNetwork, load_network
from sskt.sources.source import SOURCES, Source, SourceConfig, build_source
from sskt.sources import clustered  # noqa: F401,E402  (registers source kind `clustered`)

__all__ = ["SourceBank", "LoadedNetwork", "load_network", "SOURCES", "Source", "SourceConfig", "build_source"]
