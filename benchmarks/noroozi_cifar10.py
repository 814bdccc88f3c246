"""Noroozi et al. 2018 at CIFAR-10 scale on a CPU: pretext, cluster transfer, clustered SSKT source.

Unlabelled pool: ``UNLAB`` training images per class (labels never read by pretext or clustering;
they only give the clusters' NMI). Labelled subset for evaluation: ``LAB`` per class; test subset
``TEST`` per class. Every student is a CIFAR ResNet-20; every number is measured by

* linear probe and k-NN (k = 20) on each stage's frozen, globally pooled features (best stage shown),
* fine-tuning (all layers, ``FT_EPOCHS`` epochs on the labelled subset).

Rows: (a) random student; (b) ResNet-20 trained directly on rotation; (c) cluster transfer from a
ResNet-32 rotation teacher into a ResNet-20, and (c') from the ResNet-20 rotation teacher (depth
comparison); (d) cluster transfer from HOG; (e) SSKT on the labelled subset with (c)'s clustered
teacher as the only source. Every step is a `sskt` command, logged with its wall time.

    nohup /work/venv/bin/python benchmarks/noroozi_cifar10.py > runs/noroozi/log.txt 2>&1 &
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from sskt.engine.history import read_result  # any sskt's result.json, in today's convention

ROOT = Path(os.environ.get("CIFAR_JPEG", "/work/shared/datasets/cifar10-jpeg"))
OUT = Path(os.environ.get("NOROOZI_OUT", "runs/noroozi"))
SSKT = str(Path(sys.executable).with_name("sskt"))
UNLAB, LAB, TEST = int(os.environ.get("UNLAB", 400)), int(os.environ.get("LAB", 50)), int(os.environ.get("TEST", 100))
PRE_EPOCHS, CT_EPOCHS, FT_EPOCHS = (int(os.environ.get(k, d)) for k, d in
                                     (("PRE_EPOCHS", 3), ("CT_EPOCHS", 3), ("FT_EPOCHS", 10)))
K = int(os.environ.get("K", 50))

DATA = [f"data.dataset=imagefolder", f"data.root={ROOT}", f"data.test_per_class={TEST}"]
TRAIN = ["train.progress_bar=false", "train.tensorboard=false", "train.schedule=cosine", "train.batch_size=128",
         "train.lr=0.1", "train.weight_decay=0.0005"]
UNLABELLED = DATA + [f"data.per_class={UNLAB}"]  # the pool: per_class only picks images, labels unused
LABELLED = [f"data.per_class={LAB}", "train.batch_size=50"]
FINETUNE = LABELLED + [f"train.epochs={FT_EPOCHS}", "train.lr=0.05", "train.eval_every=" + str(FT_EPOCHS)]

log: list[dict] = []


def sskt(*args: str) -> float:
    cmd = [SSKT, *args]
    started = time.perf_counter()
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(proc.stdout[-2000:], proc.stderr[-1500:] if proc.returncode else "", f"[{seconds:.0f}s]", flush=True)
    log.append({"cmd": shlex.join(cmd).replace(SSKT, "sskt"), "seconds": round(seconds, 1), "rc": proc.returncode})
    if proc.returncode:
        raise SystemExit(f"failed: {shlex.join(cmd)}")
    return seconds


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SSKT_CACHE_DIR", str(OUT / "cache"))
    results: dict = {}
    started = time.perf_counter()

    def train(cmd: str, out: str, *extra: str) -> Path:
        run = OUT / out
        if not (run / "result.json").is_file():
            sskt(*cmd.split(), *UNLABELLED, *TRAIN, f"out_dir={run}", *extra)
        return run

    # (a) random student: a 0-epoch run is not possible, so a ResNet-20 checkpoint with lr=0 (weights = init).
    rand = train("train", "random", "method.name=scratch", "train.epochs=1", "train.lr=0.000000001", "train.weight_decay=0", "train.limit_train_batches=1")
    # (b) direct pretext on the student architecture; teachers for (c) and (c').
    rot20 = train("pretext --task rotation", "rot-r20", "target.arch=cifar_resnet20", f"train.epochs={PRE_EPOCHS}")
    rot32 = train("pretext --task rotation", "rot-r32", "target.arch=cifar_resnet32", f"train.epochs={PRE_EPOCHS}")
    # (c) deeper teacher -> ResNet-20 student; (d) HOG -> ResNet-20 student.
    ct = {}
    for name, teacher in (("ct-rot32", rot32), ("ct-hog", None)):
        spec = "hog" if teacher is None else str(teacher / "checkpoints" / "last.ckpt")
        extra = [] if teacher is None else ["method.layer=layer3"]
        ct[name] = train("cluster-transfer", name, "target.arch=cifar_resnet20", f"method.teacher={spec}",
                         f"method.k={K}", f"train.epochs={CT_EPOCHS}", *extra)
    # (e) SSKT on the labelled subset with the clustered ResNet-32 rotation teacher as its only source.
    sskt_run = OUT / "sskt-clustered"
    if not (sskt_run / "result.json").is_file():
        sskt("train", *DATA, *TRAIN, *FINETUNE, "method.name=sskt", f"out_dir={sskt_run}",
             "method.sources=[{name: rot32, kind: clustered, temperature: 1, options: {centroids: "
             f"{ct['ct-rot32'] / 'centroids.pt'}, temperature: 0.1}}}}]", "method.alpha=0.5")

    rows = {"(a) random R20": rand, "(b) rotation R20 (direct)": rot20, "(c) CT rot-R32 -> R20": ct["ct-rot32"],
            "(d) CT HOG -> R20": ct["ct-hog"], "(e) SSKT, clustered rot-R32 source": sskt_run,
            "teacher: rotation R32": rot32}
    for label, run in rows.items():
        evaluate_run(label, run, results)
    # (c') same-depth teacher, if the budget allows: deeper teacher -> better student?
    if time.perf_counter() - started < float(os.environ.get("BUDGET_S", 1500)) - 300:
        c2 = train("cluster-transfer", "ct-rot20", "target.arch=cifar_resnet20",
                   f"method.teacher={rot20 / 'checkpoints' / 'last.ckpt'}", "method.layer=layer3", f"method.k={K}",
                   f"train.epochs={CT_EPOCHS}")
        evaluate_run("(c') CT rot-R20 -> R20", c2, results)
    summary = {"results": results, "commands": log, "wall_seconds": round(time.perf_counter() - started, 1),
               "settings": {"unlabelled_per_class": UNLAB, "labelled_per_class": LAB, "test_per_class": TEST,
                            "pretext_epochs": PRE_EPOCHS, "ct_epochs": CT_EPOCHS, "finetune_epochs": FT_EPOCHS,
                            "k": K}}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def evaluate_run(label: str, run: Path, results: dict) -> None:
    ckpt = run / "checkpoints" / "last.ckpt"
    row = results.setdefault(label, {"run": str(run)})
    for protocol in ("linear", "knn"):
        out = run / f"eval-{protocol}.json"
        if not out.is_file():
            cmd = [SSKT, "evaluate", "--protocol", protocol, str(ckpt), *DATA, *LABELLED]
            started = time.perf_counter()
            print("$", shlex.join(cmd), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            log.append({"cmd": shlex.join(cmd).replace(SSKT, "sskt"),
                        "seconds": round(time.perf_counter() - started, 1), "rc": proc.returncode})
            if proc.returncode:
                print(proc.stderr[-1500:], flush=True)
                continue
            out.write_text(proc.stdout)
        r = json.loads(out.read_text())
        row[protocol] = {"best": r["value"], "best_layer": r["best_layer"],
                         "layers": {k: v["top1"] for k, v in r["layers"].items()}}
    ft_dir = run / "finetune"
    if run.name == "sskt-clustered":  # already trained on the labelled subset: its own main head
        row["finetune"] = read_result(run / "result.json")["final"]
    else:
        if not (ft_dir / "result.json").is_file():
            sskt("evaluate", "--protocol", "finetune", str(ckpt), *DATA, *FINETUNE, f"out_dir={ft_dir}")
        row["finetune"] = read_result(ft_dir / "result.json")["final"]
    own = read_result(run / "result.json")
    row["own_task_acc"] = own.get("final")
    if "clusters" in own:
        row["clusters"] = {k: own["clusters"].get(k) for k in ("nmi", "test_nmi", "num_empty", "min_size", "max_size")}
    print(label, json.dumps(row), flush=True)


def report(summary_path: Path = OUT / "summary.json", md: Path = Path("benchmarks/results/noroozi.md")) -> None:
    """Render summary.json as the Markdown results table (``python benchmarks/noroozi_cifar10.py --report``)."""
    s = json.loads(summary_path.read_text())
    lines = ["| row | linear (best stage) | k-NN (best stage) | fine-tune | own task acc | cluster NMI (train/test) |",
             "|---|---|---|---|---|---|"]
    for label, r in s["results"].items():
        lin, knn, cl = r.get("linear") or {}, r.get("knn") or {}, r.get("clusters") or {}
        nmi = f"{cl['nmi']:.3f} / {cl['test_nmi']:.3f}" if cl.get("nmi") is not None else ""
        lines.append(f"| {label} | {lin.get('best', float('nan')):.1f} ({lin.get('best_layer', '')}) | "
                     f"{knn.get('best', float('nan')):.1f} ({knn.get('best_layer', '')}) | {r['finetune']:.1f} | "
                     f"{(r.get('own_task_acc') or float('nan')):.1f} | {nmi} |")
    cmds = "\n".join(f"{c['cmd']}    # {c['seconds']} s" for c in s["commands"])
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(f"## Noroozi et al. 2018 at CIFAR-10 scale\n\nSettings: {json.dumps(s['settings'])}; "
                  f"wall {s['wall_seconds']:.0f} s.\n\n" + "\n".join(lines) + f"\n\nCommands:\n\n```\n{cmds}\n```\n")
    print(md.read_text())


if __name__ == "__main__":
    report() if "--report" in sys.argv else main()
