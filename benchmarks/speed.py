"""Training throughput: the reference SSKT step vs sskt with live sources vs the exact soft-label cache
vs scratch, on this machine, in one run.

    python benchmarks/speed.py --only r50                 # the issue's comparison, P+I setting
    python benchmarks/speed.py --only r32                 # CIFAR ResNet-32 source(s)
    python benchmarks/speed.py --only r50 --group heads   # where the cache's remaining cost goes
    python benchmarks/speed.py --only r50 --group trunk   # per-source transfer modules vs one shared trunk

Every variant lives in its own worker process (so each reports its own peak RSS) and the main process
runs them in interleaved rounds (a few seconds each, order reversed every other round), so load from
other jobs on the machine hits all variants alike; images/s are totals over the rounds. Batch 128,
ResNet-20 target (CIFAR-10, 32x32) with one transfer-module head per source, SGD.

Settings: (a) torchvision ResNet-50 sources at 74 px (32 * 7/3), 1000 and 365 classes as in the
paper's P+I runs (random weights: timing only), 1, 2 or 4 sources; (b) the CIFAR ResNet-32 checkpoint
at 32 px (``../shared/weights``; random weights if absent).

Groups: ``sources`` (default) = (1) the reference step, (2) live sources, (3) the exact cache, (4) scratch,
plus source inference alone. ``heads`` = the exact cache against "free sources" (the same SSKT step fed
fixed soft labels: no source, no cache read) with transfer modules and with linear heads: the cache
is as cheap as sources can get when cache ~ free sources; what is left over scratch is the heads.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

BATCH = 128
PADDING = 4
R32_CKPT = Path(__file__).resolve().parents[1] / ".." / "shared" / "weights" / "cifar10-resnets" / "resnet32-d509ac18.th"


# ------------------------------------------------------------------------------------------ models

def make_sources(setting: str, n: int) -> list:
    """The sources of a setting as sskt Sources (their networks are reused by the reference step)."""
    from sskt.sources.source import Source, build_source

    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        if setting == "r50":
            classes = (1000, 365)[i % 2]
            out.append(build_source({"name": f"s{i}", "arch": "resnet50", "num_classes": classes,
                                     "input_size": 74, "mean": "imagenet", "std": "imagenet"}))
        else:
            cfg = {"name": f"s{i}", "arch": "cifar_resnet32", "num_classes": 10, "input_size": 32,
                   "mean": "imagenet", "std": "imagenet"}
            if R32_CKPT.is_file():
                cfg["checkpoint"] = str(R32_CKPT)
            src = build_source(cfg)
            if i:  # distinct weights per copy, so the cache keys (and files) differ as real sources would
                with torch.no_grad():
                    src.network.linear.bias.add_(0.01 * i)
            out.append(src)
        assert isinstance(out[-1], Source)
    return out


class ReferenceStep:
    """The official 2D SSKT training step, as its code does it (methods-spec §1.4-1.5): the data
    pipeline hands over a normalised fp32 NCHW batch; the target returns main + auxiliary logits; each
    source is switched to train mode and, under no_grad, gets ``nn.Upsample(scale_factor=7/3,
    mode='bilinear')`` of the batch (CIFAR) and its own forward; loss = CE + alpha * T^2 *
    KLDivLoss(mean) per source; backward; SGD step. Sources stay fp32 NCHW."""

    def __init__(self, setting: str, n_sources: int) -> None:
        from sskt.methods.sskt import make_head
        from sskt.models.target import TargetNetwork

        self.target = TargetNetwork("cifar_resnet20", 10)
        example = torch.rand(2, 3, 32, 32)
        self.sources = [s.network for s in make_sources(setting, n_sources)]
        classes = [s.fc.out_features if hasattr(s, "fc") else 10 for s in self.sources]
        self.heads = nn.ModuleList([make_head("transfer", self.target, example, k, None) for k in classes])
        params = list(self.target.parameters()) + list(self.heads.parameters())
        self.opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.upsample = nn.Upsample(scale_factor=7 / 3, mode="bilinear") if setting == "r50" else None
        self.kl = nn.KLDivLoss()  # reduction='mean' over B x K, as the reference
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.T, self.alpha = 3.0, 0.1

    def step(self, images01: torch.Tensor, labels: torch.Tensor) -> None:
        inputs = (images01 - self.mean) / self.std  # the reference normalises in the data pipeline
        self.target.train()
        # sskt's TargetNetwork normalises inside; same arithmetic as the reference's normalised input.
        feats = self.target.forward_features(images01)
        loss = nn.functional.cross_entropy(feats.logits, labels)
        for head, src in zip(self.heads, self.sources):
            src.train()  # the reference: BatchNorm in train mode, statistics drift
            with torch.no_grad():
                x = self.upsample(inputs) if self.upsample is not None else inputs
                q = src(x)
            a = head(feats.pooled, feats.stages)
            loss = loss + self.alpha * self.kl(nn.functional.log_softmax(a / self.T, 1),
                                               nn.functional.softmax(q / self.T, 1)) * self.T * self.T
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class SsktStep:
    """sskt's own step, as :class:`~sskt.engine.lit.MethodModule` runs it: the batch's views (stored ones and
    their soft labels with a cache), method.training_step, backward, SGD."""

    def __init__(self, kind: str, setting: str, n_sources: int, cache_dir: str, n_images: int,
                 head: str = "transfer", **options: object) -> None:
        from sskt.data.views import TrainingViews
        from sskt.methods.scratch import Scratch, ScratchOptions
        from sskt.methods.sskt import SSKT, SSKTOptions
        from sskt.models.target import TargetNetwork

        torch.manual_seed(0)
        target = TargetNetwork("cifar_resnet20", 10)
        if kind == "scratch":
            self.method = Scratch(target, ScratchOptions())
        else:
            sources = make_sources(setting, n_sources)
            opts = SSKTOptions(sources=[{"name": s.name} for s in sources], head=head, **options)  # precision: auto
            self.method = SSKT(target, sources, opts, example=torch.rand(2, 3, 32, 32))
            if kind == "cache":
                images, targets = bench_data(n_images)
                self.method.attach_cache(cache_spec_for(cache_dir), images, targets, PADDING, True, progress=False)
            elif kind == "floor":
                # The SSKT step with sources that cost nothing: fixed soft labels, no source, no cache
                # lookup. What is left is SSKT's own work (heads forward/backward, soft-label losses):
                # the floor of any way of providing source outputs.
                fixed = {s.name: torch.randn(BATCH, s.num_classes) for s in sources}
                self.method.soft_labels = lambda batch: fixed
        self.method.train()
        self.opt = torch.optim.SGD([p for p in self.method.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                   weight_decay=5e-4)
        self.views = TrainingViews(PADDING, True, seed=0, store=self.method.soft_label_store())
        self.views.start_epoch(0)

    def step(self, batch: dict) -> None:
        out = self.method.training_step(self.views(batch))
        loss = sum(out.losses.values())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class SourceInference:
    """Source inference alone (one ResNet-50 at 74 px): fp32 NCHW vs bf16 autocast + channels_last."""

    def __init__(self, precision: str) -> None:
        from sskt.sources.bank import SourceBank

        self.bank = SourceBank(make_sources("r50", 1), precision)

    def step(self, images01: torch.Tensor) -> None:
        self.bank(images01)


def cache_spec_for(cache_dir: str) -> dict:
    return {"mode": "exact", "views": 8, "topk": 10, "dir": cache_dir, "chunk": 64, "batch_size": 128}


def bench_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------------------------------ workers

def worker(spec: dict, conn) -> None:
    torch.set_num_threads(spec["threads"])
    kind = spec["kind"]
    n_images = spec["n_images"]
    images, targets = bench_data(n_images)
    g = torch.Generator().manual_seed(1)
    if kind == "reference":
        runner = ReferenceStep(spec["setting"], spec["n"])
    elif kind == "infer":
        runner = SourceInference(spec["precision"])
    else:
        runner = SsktStep(kind, spec["setting"], spec["n"], spec["cache_dir"], n_images, spec.get("head", "transfer"),
                          **spec.get("options", {}))
    conn.send("ready")
    from sskt.data.augment import BatchAugment

    aug = BatchAugment(PADDING, True, seed=2)
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            break
        if cmd == "rss":
            conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux reports KiB)
            continue
        total = 0.0
        for _ in range(arg):
            index = torch.randint(0, n_images, (BATCH,), generator=g)
            batch = {"image": images[index], "target": targets[index], "index": index}
            t0 = time.perf_counter()
            if spec.get("precision") == "bf16-mixed":
                with torch.autocast("cpu", dtype=torch.bfloat16):  # what Lightning's bf16-mixed does on a CPU
                    runner.step(batch)
            elif kind == "reference":
                x, _ = aug(batch["image"])  # the reference's crop + flip (done by its data loader)
                runner.step(x, batch["target"])
            elif kind == "infer":
                runner.step(aug(batch["image"])[0])
            else:
                runner.step(batch)
            total += time.perf_counter() - t0
        conn.send(total)


# ------------------------------------------------------------------------------------------ main

GROUPS = ("sources", "heads", "trunk")


def group_variants(group: str, setting: str) -> list[dict]:
    """The variants of one group, for one setting. ``sources``: the issue's comparison (reference, live,
    cache, scratch). ``heads``: where the cache's remaining cost goes (cache vs the same step with free
    sources, transfer vs linear heads). Groups run separately: a worker per variant holds ~1.3 GB."""
    if group == "sources":
        out = [{"name": f"{setting} reference x2", "kind": "reference", "setting": setting, "n": 2}]
        out += [{"name": f"{setting} {kind} x{n}", "kind": kind, "setting": setting, "n": n}
                for kind in ("live", "cache") for n in (1, 2, 4)]
        # An opt-in setting on top of the defaults: the target trained in bf16 autocast (train.precision=bf16-mixed).
        out += [{"name": f"{setting} live x2 bf16-mixed", "kind": "live", "setting": setting, "n": 2,
                 "precision": "bf16-mixed"}]
        return out
    if group == "trunk":  # issue 13: many sources at the cost of one; what gradsim's gradient comparisons cost
        from sskt.methods.source_weighting import WeightingOptions

        out = [{"name": f"{setting} cache{suffix} x{n}", "kind": "cache", "setting": setting, "n": n,
                "options": {"transfer_trunk": trunk}}
               for trunk, suffix in (("per-source", ""), ("shared", " shared")) for n in (1, 2, 4)]
        out += [{"name": f"{setting} cache{suffix} gradsim x4", "kind": "cache", "setting": setting, "n": 4,
                 "options": {"transfer_trunk": trunk, "weighting": WeightingOptions("gradsim")}}
                for trunk, suffix in (("per-source", ""), ("shared", " shared"))]
        return out
    out = [{"name": f"{setting} {kind}{suffix} x{n}", "kind": kind, "setting": setting, "n": n, "head": head}
           for head, suffix in (("transfer", ""), ("linear", " linear")) for kind in ("cache", "floor")
           for n in (1, 2, 4)]
    # train.precision=bf16-mixed (Lightning's CPU/GPU autocast) speeds up the target itself.
    out += [{"name": f"{setting} cache x2 bf16-mixed", "kind": "cache", "setting": setting, "n": 2,
             "precision": "bf16-mixed"},
            {"name": f"{setting} scratch bf16-mixed", "kind": "scratch", "setting": "none", "n": 0,
             "precision": "bf16-mixed"}]
    return out


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from sskt.sources.bank import bf16_supported

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), bf16 fast: {bf16_supported(torch.device('cpu'))}, "
            f"load average at start {load:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description="sskt training throughput benchmark")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.5, help="target time per variant per round")
    p.add_argument("--r50-images", type=int, default=64, help="training images in the R50 cache (timing only)")
    p.add_argument("--r32-images", type=int, default=512)
    p.add_argument("--only", choices=["r50", "r32"], default=None, help="one setting only (less memory and time)")
    p.add_argument("--group", choices=GROUPS, default="sources",
                   help="sources: reference/live/cache/scratch; heads: cache vs free sources, transfer vs linear; "
                        "trunk: per-source transfer modules vs one shared trunk, and gradsim's cost")
    p.add_argument("--out", default="benchmarks/results/speed-table.md")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--report-only", action="store_true", help="rewrite the table from <out>.json")
    args = p.parse_args()
    if args.report_only:
        return write_report(args, json.loads(Path(args.out).with_suffix(".json").read_text()))
    started = time.perf_counter()
    threads = torch.get_num_threads()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="sskt-speed-cache-")
    print(machine(), flush=True)

    # 1. Cache building, timed (main process), for the largest source set of each setting.
    from sskt.methods.sskt import SSKT, SSKTOptions
    from sskt.models.target import TargetNetwork

    builds = {}
    for setting, n_img in (("r50", args.r50_images), ("r32", args.r32_images)):
        if args.only and setting != args.only:
            continue
        sources = make_sources(setting, 4)
        m = SSKT(TargetNetwork("cifar_resnet20", 10), sources, SSKTOptions(sources=[{"name": s.name} for s in sources]),
                 example=torch.rand(2, 3, 32, 32))
        images, targets = bench_data(n_img)
        t0 = time.perf_counter()
        m.attach_cache(cache_spec_for(cache_dir), images, targets, PADDING, True, progress=False)
        secs = time.perf_counter() - t0
        builds[setting] = {"seconds": secs, "images": n_img, "views": m.cache.built_views,
                           "bytes": {n: f.size for n, f in m.cache.files.items()},
                           "classes": {n: f.meta["num_classes"] for n, f in m.cache.files.items()}}
        print(f"cache {setting}: {m.cache.built_views} views x 4 sources in {secs:.1f}s", flush=True)
        del m, sources

    # 2. Workers, one per variant.
    variants = []
    for setting in ((args.only,) if args.only else ("r50", "r32")):
        variants += group_variants(args.group, setting)
    variants.append({"name": "scratch", "kind": "scratch", "setting": "none", "n": 0})
    if args.only != "r32" and args.group == "sources":
        variants.append({"name": "R50 inference fp32 NCHW", "kind": "infer", "precision": "fp32", "setting": "r50"})
        variants.append({"name": "R50 inference bf16 channels_last", "kind": "infer", "precision": "bf16",
                         "setting": "r50"})
    ctx = mp.get_context("spawn")
    procs = {}
    for v in variants:
        v.setdefault("n_images", args.r50_images if v["setting"] == "r50" else args.r32_images)
        v.update(threads=threads, cache_dir=cache_dir)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(v, child), daemon=True)
        proc.start()
        procs[v["name"]] = (proc, parent)
        parent.recv()  # one at a time: building models while another measures would skew nothing yet
    # Warm-up steps (not counted) and an estimate of the step time.
    est = {}
    for name, (_, conn) in procs.items():
        for _ in range(2):
            conn.send(("run", 1))
            est[name] = conn.recv()
    print(f"workers ready after {time.perf_counter() - started:.0f}s", flush=True)
    totals = {name: [0.0, 0] for name in procs}
    per_round: dict[str, list[float]] = {name: [] for name in procs}
    rss: dict[str, float] = {}
    dead: set[str] = set()
    names = list(procs)

    def ask(name: str, msg: tuple):
        # A worker can die (e.g. the OOM killer on a shared machine): drop it, keep the others' numbers.
        try:
            procs[name][1].send(msg)
            return procs[name][1].recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            print(f"worker {name!r} died; its variant is left out", flush=True)
            dead.add(name)
            return None

    def save() -> dict:
        for name in names:
            if name not in dead:
                value = ask(name, ("rss", None))
                if value is not None:
                    rss[name] = value
        ips = {name: BATCH * t[1] / t[0] for name, t in totals.items() if t[1] and name not in dead}
        raw = {"ips": ips, "per_round": per_round, "rss": rss, "builds": builds,
               "wall": time.perf_counter() - started, "rounds": args.rounds, "seconds": args.seconds,
               "machine": machine(), "dead": sorted(dead)}
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))  # partial results survive
        return raw

    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in dead:
                continue
            steps = max(1, round(args.seconds / max(est[name], 1e-3)))
            secs = ask(name, ("run", steps))
            if secs is None:
                continue
            totals[name][0] += secs
            totals[name][1] += steps
            per_round[name].append(BATCH * steps / secs)
        raw = save()
        print(f"round {r + 1}/{args.rounds} done at {time.perf_counter() - started:.0f}s", flush=True)
    for name, (proc, conn) in procs.items():
        if name not in dead:
            conn.send(("stop", None))
        proc.join(timeout=10)
    write_report(args, raw)


def write_report(args, raw: dict) -> None:
    ips, per_round, rss, builds, wall = raw["ips"], raw["per_round"], raw["rss"], raw["builds"], raw["wall"]
    command = f"python benchmarks/speed.py --group {args.group} --rounds {args.rounds} --seconds {args.seconds}"
    if args.only:
        command += f" --only {args.only}"
    lines = [f"Machine: {raw['machine']}", "",
             f"Command: `{command}` (wall {wall:.0f}s; batch {BATCH}; ResNet-20 target; images/s are totals over "
             f"{args.rounds} interleaved rounds; spread = min-max of per-round images/s)", ""]
    nan = float("nan")
    ips = {**{k: nan for k in per_round}, **ips}
    rss = {**{k: nan for k in per_round}, **rss}
    per_round = {k: (v or [nan]) for k, v in per_round.items()}
    scratch = ips["scratch"]
    for setting, title in (("r50", "ResNet-50 sources at 74 px (1000/365 classes, random weights)"),
                           ("r32", "CIFAR ResNet-32 source(s) at 32 px")):
        rows = [name for name in per_round if name.startswith(f"{setting} ")]
        if not rows:
            continue
        ref = ips.get(f"{setting} reference x2")
        header = "| variant | images/s | spread |" + (" vs reference x2 |" if ref else "") + " slowdown vs scratch |"
        has_floor = any(" floor" in name for name in rows)
        header += " slowdown vs free sources |" if has_floor else ""
        lines += [f"### {title}", "", header + " peak RSS (MiB) |", "|" + "---|" * header.count("|")]
        for name in rows + ["scratch"]:
            pr = per_round[name]
            row = f"| {name} | {ips[name]:.1f} | {min(pr):.1f}-{max(pr):.1f} |"
            row += f" {ips[name] / ref:.2f}x |" if ref else ""
            row += f" {scratch / ips[name]:.2f}x |"
            if has_floor:
                floor = ips.get(name.replace(" cache", " floor"))
                row += f" {floor / ips[name]:.2f}x |" if " cache" in name and floor else " |"
            lines.append(row + f" {rss[name]:.0f} |")
        b = builds.get(setting)
        if b is None:
            continue
        per_img = sum(b["bytes"].values()) / b["images"]
        per_img2 = sum(v for k, v in b["bytes"].items() if k in ("s0", "s1")) / b["images"]
        rate = b["views"] * 4 / b["seconds"] if b["seconds"] else float("nan")
        lines += ["", f"Cache build ({setting}, exact, K = 8 views, top-10, 4 sources): {b['views']} views per source "
                      f"in {b['seconds']:.1f}s = {rate:.0f} source-views/s. "
                      f"Size {per_img:.0f} bytes/image for the 4 sources, {per_img2:.0f} bytes/image for 2; "
                      f"CIFAR-10 (50,000 images), 2 sources: {per_img2 * 50000 / 1e6:.1f} MB, "
                      f"estimated build {50000 * 8 * 2 / rate / 60:.0f} min on this machine.", ""]
    if "R50 inference fp32 NCHW" in ips:
        lines += ["### Source inference alone (one ResNet-50, 74 px, batch 128)", "",
                  "| precision | images/s | peak RSS (MiB) |", "|---|---|---|"]
        for name in ("R50 inference fp32 NCHW", "R50 inference bf16 channels_last"):
            lines.append(f"| {name} | {ips[name]:.1f} | {rss[name]:.0f} |")
        lines.append(f"\nbf16 + channels_last / fp32 NCHW: "
                     f"{ips['R50 inference bf16 channels_last'] / ips['R50 inference fp32 NCHW']:.2f}x")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
