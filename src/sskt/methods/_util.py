"""Helpers several methods share (KD and SSKT's sources, DML's and MAXL's optimisers)."""
from __future__ import annotations

import sys
from typing import Any

from sskt.errors import SSKTError
from sskt.evaluation.scoring import evaluate_on_test
from sskt.methods.base import BuildContext
from sskt.sources.source import Source

# Below this validation top-1 (%) an adapted source is a risky teacher for the target's main head: taught at a
# fixed weight, a weak teacher can pull the target below training from scratch. A heuristic (the evidence:
# docs/research-notes.md): the bar of the warning for head: main and KD, and of SSKT's head: auto.
WEAK_MAIN_TEACHER_TOP1 = 50.0


def evaluate_once(src: Source, data: Any) -> float | None:
    """Test top-1 (%) of a frozen source, measured once per process for the same weights and data (a
    teacher's accuracy is the same for every seed and variant of a comparison)."""
    if data is None:
        return None
    from sskt.sources.cache_keys import weights_digest

    key = (weights_digest(src.network), src.input_size, src.input_scale, len(data), int(data.targets.sum()),
           int(data.images[:64].float().sum()))
    return evaluate_on_test(src, data, memo_key=key)


def make_room_for_adaptation(src: Source, ctx: BuildContext, adapt: str = "probe") -> None:
    """What building a method does for ``adapt: probe`` (or ``features``) on its source or teacher: the source
    gets an (untrained) classifier of the adapted shape (for ``features``, an identity standardisation of its
    embedding), drawing the random numbers the fit draws (the weights built after it are the same whether or
    not it is ever fitted). :func:`adapt_source`, in the method's ``prepare``, fits it; a rebuilt run
    (evaluate, export) never does: no source runs there."""
    from sskt.sources.adapt import make_room_for_features, make_room_for_probe, reshape_classifier

    if adapt == "features":
        make_room_for_features(src)
        return
    if ctx.multilabel:
        raise SSKTError(f"source {src.name!r}: adapt: probe is for single-label targets")
    if ctx.train_data is None:
        reshape_classifier(src, ctx.num_classes)  # nothing to fit on: the adapted shape only
        return
    make_room_for_probe(src, ctx.labeled_targets, ctx.val_data.targets if ctx.val_data is not None else None)


def adapt_source(src: Source, ctx: BuildContext) -> dict:
    """``adapt: probe`` for a method's source or teacher (in the method's ``prepare``, after
    :func:`make_room_for_adaptation`): the probe fitted on the labelled training images (the validation
    split picks the penalty) and written into the source's classifier. Returns what it measured. For
    ``adapt: features``: the embedding's standardisation, fitted on the labelled training images."""
    from sskt.sources.adapt import fit_probe_in_place, fit_standardizer_in_place

    if ctx.train_data is None:
        return {}
    if src.outputs == "features":
        print(f"sskt: standardising source {src.name!r}'s embedding on {len(ctx.labeled_data)} training images "
              f"(adapt: features)", file=sys.stderr, flush=True)
        return fit_standardizer_in_place(src, ctx.labeled_data.images)
    print(f"sskt: fitting a linear probe on source {src.name!r}'s features of {len(ctx.labeled_data)} labelled "
          f"images (adapt: probe)", file=sys.stderr, flush=True)
    return fit_probe_in_place(src, ctx.labeled_data, ctx.val_data)


def weak_teacher_warnings(adapted: dict[str, dict], advice: str,
                          bar: float = WEAK_MAIN_TEACHER_TOP1) -> list[str]:
    """One warning line per adapted source that teaches the main head although it scored below ``bar`` (%) on
    the validation split; ``advice`` says what to do instead.

    Example:
        >>> weak_teacher_warnings({"f": {"val_top1": 26.4}, "g": {"val_top1": 66.4}}, "drop it")[0][:41]
        "sskt: warning: source 'f' scores 26.4% on"
    """
    return [f"sskt: warning: source {name!r} scores {info['val_top1']:.1f}% on the validation split once adapted; "
            f"as a teacher of the main head a weak source can pull the target below training from scratch "
            f"(see docs/research-notes.md): {advice}"
            for name, info in adapted.items() if info.get("val_top1", 100.0) < bar]


def as_list(obj: Any) -> list:
    """What ``module.optimizers()`` gives a manual step (one optimiser, or a list of them), as a list."""
    return obj if isinstance(obj, list) else [obj]
