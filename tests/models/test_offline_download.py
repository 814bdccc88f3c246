"""A download allowed on a machine without a network: one line saying the host could not be reached, at once
(not half a minute of retries ending in "the repo has no config.json")."""
from __future__ import annotations

import socket
import time

import pytest

from sskt.errors import SSKTError
from sskt.models.hub import hf_file, torch_hub_file


@pytest.fixture
def offline(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_hugging_face_download_without_a_network(offline) -> None:
    start = time.monotonic()
    with pytest.raises(SSKTError, match="could not reach .* to download hf-hub:org/model .*Name or service not known"):
        hf_file("org/model", "config.json", allow_download=True)
    assert time.monotonic() - start < 5


def test_torch_hub_download_without_a_network(offline) -> None:
    with pytest.raises(SSKTError, match="could not reach example.org to download resnet weights"):
        torch_hub_file("https://example.org/w/resnet-0123.pth", "resnet", allow_download=True)
