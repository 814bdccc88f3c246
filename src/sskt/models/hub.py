"""Weight files from local caches (torch hub, Hugging Face), downloaded only when the user allows it
(``allow_download: true`` or ``SSKT_ALLOW_DOWNLOAD=1``); otherwise one line naming the file and the fix."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from sskt.errors import SSKTError


def downloads_allowed(allow_download: bool = False) -> bool:
    """True when the config (``allow_download: true``) or ``SSKT_ALLOW_DOWNLOAD=1`` allows a download."""
    return bool(allow_download) or os.environ.get("SSKT_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def missing_weights_error(what: str, where: str) -> SSKTError:
    return SSKTError(f"{what} not in the local cache ({where}); set allow_download: true (or "
                     f"SSKT_ALLOW_DOWNLOAD=1) to fetch them once, or drop pretrained and give a local file as checkpoint")


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url``'s host cannot be reached (a name that does not resolve, a refused or timed-out connection),
    or None when it answers: asked once, before a download library retries for half a minute."""
    import socket

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return str(err.strerror or err)
    return None


def _unreachable_error(url: str, why: str, what: str, where: str) -> SSKTError:
    return SSKTError(f"could not reach {urlparse(url).netloc} to download {what} ({why}); check the network, or "
                     f"download it on a machine that is online and copy it to {where}")


def torch_hub_file(url: str, what: str, allow_download: bool = False, check_hash: bool = False) -> Path:
    """``url``'s file in torch hub's cache (``$TORCH_HOME/hub/checkpoints/<file name>``), where torch
    hub and torchvision look for it; downloaded there only when allowed."""
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if path.is_file():
        return path
    if not downloads_allowed(allow_download):
        raise missing_weights_error(f"{what} weights are", f"{path}, from {url}")
    # torchvision names its files <name>-<first digits of the SHA-256>.pth: check them as torch hub does.
    digest = re.search(r"-([a-f0-9]*)\.", path.name) if check_hash else None
    why = unreachable(url)
    if why is not None:
        raise _unreachable_error(url, why, f"{what} weights", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=digest.group(1) if digest else None)
    except (OSError, RuntimeError) as err:
        raise SSKTError(f"could not download {what} weights from {url} ({str(err).splitlines()[0]}); "
                        f"check the network, or put the file at {path}") from None
    return path


def hf_cached(repo_id: str, names: Sequence[str]) -> Path | None:
    """The first of ``names`` in the local Hugging Face cache (``HF_HUB_OFFLINE=1`` semantics), or None."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repo, _, revision = repo_id.partition("@")
    for name in names:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, name, revision=revision or None, local_files_only=True))
        except (EntryNotFoundError, FileNotFoundError):  # LocalEntryNotFoundError: not in the cache
            continue
    return None


def hf_file(repo_id: str, filenames: str | Sequence[str], allow_download: bool = False) -> Path | None:
    """The first of ``filenames`` in a Hugging Face hub repo (``org/name[@revision]``), from the local
    cache; downloaded only when allowed. None when the repo has none of them."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    cached = hf_cached(repo_id, names)
    if cached is not None:
        return cached
    if not downloads_allowed(allow_download):
        raise missing_weights_error(f"hf-hub:{repo_id}'s {' or '.join(names)} is",
                       f"Hugging Face cache {huggingface_hub.constants.HF_HUB_CACHE}")
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _, revision = repo_id.partition("@")
    endpoint = constants.ENDPOINT
    why = unreachable(endpoint)
    if why is not None:
        raise _unreachable_error(endpoint, why, f"hf-hub:{repo_id}", f"the Hugging Face cache {constants.HF_HUB_CACHE}")
    for name in names:
        try:
            return Path(huggingface_hub.hf_hub_download(repo, name, revision=revision or None))
        except LocalEntryNotFoundError as err:  # no connection (a subclass of "no such file": caught first)
            raise _unreachable_error(endpoint, str(err).splitlines()[0][:120], f"hf-hub:{repo_id}",
                                     f"the Hugging Face cache {constants.HF_HUB_CACHE}") from None
        except EntryNotFoundError:  # the repo has no such file: try the next name
            continue
        except Exception as err:  # network, auth, unknown repo: one line, whatever the hub library raised
            first = str(err).splitlines()[0] if str(err) else ""
            raise SSKTError(f"could not download {name} of hf-hub:{repo_id} ({type(err).__name__}: {first}); "
                            f"check the repo id and the network") from None
    return None
