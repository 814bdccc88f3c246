"""A run directory remembers the config that made it: a rerun resumes only the same experiment.

``fit`` calls :func:`prepare_run_dir` before any data is decoded. It refuses an ``out_dir`` that cannot
be written, and a rerun whose config differs from the run already there in a key that changes what is
trained (naming the keys); the keys of :data:`CONTINUABLE` (more epochs, how often to evaluate, devices,
logging) may change on purpose, and the change is reported. ``train.resume=false`` starts over.

``fit`` holds :func:`run_lock` for its whole life: a second run started in the same folder stops at once
with one line naming the process that holds it. The lock is ``flock`` on ``out_dir/.sskt-run.lock``, which
the kernel releases when its process ends however it ends, so a killed run never leaves a stale lock;
``.sskt-run.owner`` beside it names the holder (pid, host, start time) for that message.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from sskt.config import ExperimentConfig
from sskt.errors import SSKTError
from sskt.io import atomic_text_write

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

# Keys that change how a run is shown or stored, never what it computes.
COSMETIC = frozenset({
    "name", "out_dir", "train.progress_bar", "train.log_every_n_steps", "train.tensorboard", "train.loggers",
    "train.resume", "train.checkpoint_every", "train.eval_batch_size", "data.num_workers",
})
# Keys a resumed run may also change on purpose: how long it goes, how often it is scored, on which devices.
# (More epochs under a cosine schedule stretch the rest of the schedule from where the run is.)
CONTINUABLE = COSMETIC | {"train.epochs", "train.eval_every", "train.accelerator", "train.devices",
                          "train.strategy", "train.num_nodes"}
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".sskt-run.lock"
OWNER_FILE = ".sskt-run.owner"
# Where launchers put a process's rank (Lightning's DDP children, torchrun, SLURM, MPI, LSF): a process
# with a non-zero rank here is a further rank of a run that its launching process has locked already.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK",
                  "PMI_RANK", "JSM_NAMESPACE_RANK")
# How long a run that finds the lock taken looks again while the holder's owner file is missing or names
# a dead process (the moment between one run's lock and its owner file, or its end and its unlock).
_OWNER_GRACE_S = 1.0


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (list items by index).

    Example:
        >>> flatten({"a": {"b": 1, "c": [{"d": 2}]}})
        {'a.b': 1, 'a.c.0.d': 2}
    """
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every key whose value differs (missing = None)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _checkpoint_config(path: Path) -> dict | None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable checkpoint: Lightning's resume will say so
        return None
    return ckpt.get("sskt_config") if isinstance(ckpt, dict) else None


def _stored_config(out_dir: Path) -> tuple[dict | None, str]:
    """The config of the run already in ``out_dir`` (its checkpoint's own first), and where it was read."""
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        found = _checkpoint_config(ckpt)
        if found is not None:
            return found, str(ckpt)
    result = out_dir / "result.json"
    if result.is_file():
        try:
            return json.loads(result.read_text()).get("config"), str(result)
        except (OSError, ValueError):
            return None, ""
    return None, ""


def normalised(raw: dict) -> dict:
    """A stored config with today's defaults filled in (so a key added since is not a change)."""
    try:
        return ExperimentConfig.from_dict(raw).to_dict()
    except SSKTError:
        return raw


def check_writable(out_dir: Path) -> None:
    """One line when ``out_dir`` cannot hold the run (a file in the way, no permission, read-only mount)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".sskt-write-test-"):
            pass
    except FileExistsError:
        raise SSKTError(f"out_dir {out_dir} is a file, not a folder; choose another out_dir") from None
    except NotADirectoryError:
        raise SSKTError(f"out_dir {out_dir} lies under a file, not a folder; choose another out_dir") from None
    except OSError as err:
        raise SSKTError(f"cannot write in out_dir {out_dir}: {err.strerror or err}; choose another out_dir") from None


def prepare_run_dir(config: dict, out_dir: Path, resume: bool) -> str | None:
    """Check ``out_dir`` against ``config`` and record the config there; returns a line to show, if any.

    Refuses (SSKTError) a folder that cannot be written and, when resuming, a run there of another config.
    With ``resume`` False a previous run's checkpoint and results are removed first (start over).
    """
    check_writable(out_dir)
    note = None
    stored, where = _stored_config(out_dir)
    if not resume:
        removed = [p for p in (out_dir / "checkpoints" / "last.ckpt", out_dir / "result.json", out_dir / "target.pt")
                   if p.is_file()]
        for path in removed:
            path.unlink()
        if removed:
            note = f"train.resume=false: starting over in {out_dir} (its previous checkpoint and results removed)"
    elif stored is not None:
        changes = config_changes(normalised(stored), config)
        blocking = {k: v for k, v in changes.items() if k not in CONTINUABLE}
        if blocking:
            shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in list(blocking.items())[:6])
            more = f" (and {len(blocking) - 6} more)" if len(blocking) > 6 else ""
            raise SSKTError(f"{out_dir} holds a run of another config ({shown}{more}, from {where}); use a new "
                            f"out_dir, or add train.resume=false to start over (its checkpoint is removed)")
        continued = {k: v for k, v in changes.items() if k not in ("out_dir", "name", "train.resume")}
        if continued:
            note = "continuing the run in {} with changed {}".format(
                out_dir, ", ".join(f"{k} ({_show(a)} -> {_show(b)})" for k, (a, b) in continued.items()))
    atomic_text_write(yaml.safe_dump(config, sort_keys=False), out_dir / CONFIG_FILE)
    return note


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value) if isinstance(value, str) else str(value)


def announce(note: str | None) -> None:
    if note:
        print(f"sskt: {note}", file=sys.stderr, flush=True)


# Descriptors of the run locks this process holds. A forked child (a DataLoader worker) closes its copies,
# never unlocks them: otherwise the lock would outlive a killed run for as long as its workers do.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def launches_run(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is the one that started the run, not a further rank of a multi-process run.

    Lightning starts DDP ranks 1.. by running the same command again with ``LOCAL_RANK`` set (and
    ``NODE_RANK`` on other nodes); torchrun, SLURM, MPI and LSF set their own rank variables
    (:data:`RANK_VARIABLES`). Only a process whose every rank variable is unset or 0 locks the folder.

    Example:
        >>> launches_run({}), launches_run({"LOCAL_RANK": "0"}), launches_run({"LOCAL_RANK": "1"})
        (True, True, False)
    """
    return all(environ.get(name, "").strip() in ("", "0") for name in RANK_VARIABLES)


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for one run for the duration of the block; released on return or on an exception.

    Non-blocking: if another process holds it, raises SSKTError at once naming the folder and that process.
    Further DDP ranks (see :func:`launches_run`) take no lock: their launching process holds it. Where the
    filesystem cannot lock (some network mounts) the run goes ahead unlocked, with a note.

    Example:
        >>> with run_lock(Path("runs/x")):  # doctest: +SKIP
        ...     fit(cfg)
    """
    key = str(Path(out_dir).resolve())
    if fcntl is None or not launches_run() or key in _HELD:  # nested (a stage around fit): already held here
        yield
        return
    check_writable(out_dir)
    fd = _acquire(out_dir)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        if fd is not None:
            _release(out_dir, fd)


_HELD: set[str] = set()  # run folders this process holds (a lock taken again in the same process is nested)


def _acquire(out_dir: Path) -> int | None:
    """The locked descriptor of ``out_dir``'s lock file (its owner file written), or None where the
    filesystem cannot lock."""
    path = out_dir / LOCK_FILE
    # The lock file is never removed: a process that opened it just before a removal would lock a file
    # no longer in the folder, beside one locked by the next run.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _OWNER_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # some mounts say EACCES
                os.close(fd)
                announce(f"cannot lock {out_dir} ({err.strerror or err}); the run goes ahead, but nothing "
                         f"stops a second run started in the same folder meanwhile")
                return None
        owner = _read_owner(out_dir)
        if (owner is not None and _alive(owner)) or time.monotonic() > deadline:
            os.close(fd)
            raise SSKTError(busy_message(out_dir, owner))
        time.sleep(0.05)
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.now().astimezone().isoformat(timespec="seconds"), "command": sys.argv}
        atomic_text_write(json.dumps(owner) + "\n", out_dir / OWNER_FILE)
    except BaseException:
        os.close(fd)  # closing the only descriptor unlocks
        raise
    _HELD.add(fd)
    return fd


def _release(out_dir: Path, fd: int) -> None:
    _HELD.discard(fd)
    try:
        (out_dir / OWNER_FILE).unlink(missing_ok=True)  # while still locked: never another run's file
    except OSError:
        pass  # the folder went away (or went read-only) during the run: nothing to tidy
    finally:
        os.close(fd)


def _read_owner(out_dir: Path) -> dict | None:
    try:
        owner = json.loads((out_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _alive(owner: dict) -> bool:
    """False only for a holder recorded on this host whose process no longer exists (a stale owner file)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists, under another user
    return True


def busy_message(out_dir: Path, owner: dict | None) -> str:
    """The one line for a run folder held by another run (``owner``: its owner file, if readable)."""
    if owner is None:
        who = "its process is not recorded"
    else:
        who = f"pid {owner['pid']} on host {owner.get('host', 'unknown')}"
        since = _clock(owner.get("started"))
        who += f", since {since}" if since else ""
    return f"{out_dir} is in use by another sskt run ({who}); wait for it to end, or use another out_dir"


def _clock(stamp: Any) -> str | None:
    """``HH:MM`` of an ISO time stamp today, with the date on another day (local time)."""
    try:
        when = datetime.fromisoformat(str(stamp)).astimezone()
    except ValueError:
        return None
    return when.strftime("%H:%M" if when.date() == datetime.now().astimezone().date() else "%Y-%m-%d %H:%M")
