"""Ways to run one frozen source faster, measured against each other in one run (inference only).

    python benchmarks/source_inference.py --rounds 3

A torchvision ResNet-50 (random weights, BatchNorm statistics randomised so folding is not trivial)
at 74 px, batch 128, inference mode. Variants, interleaved per round:

- ``fp32 NCHW``: the plain forward (what the reference code's sources do, minus train-mode BN);
- ``fp32 channels_last``;
- ``bf16 autocast + channels_last``: what sskt's SourceBank does (``source_precision: auto`` here);
- ``bf16 weights + channels_last``: the network cast to bf16 instead of autocast;
- ``bf16 autocast + BN folded``: ``torch.fx.experimental.optimization.fuse`` (conv + BN folding);
- ``bf16 autocast + torch.compile (freezing)``: Inductor with weights folded in as constants
  (``--no-compile`` skips it; its compile time is reported).

Prints a Markdown table of images/s (total over rounds) and the ratio to fp32 NCHW, and each
variant's largest |logit difference| to the bf16-autocast variant.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
import torchvision

BATCH, SIZE = 128, 74


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.resnet50(num_classes=1000).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="batches per variant per round")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    from torch.fx.experimental.optimization import fuse

    cl = torch.channels_last
    base = build()
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    xc = x.contiguous(memory_format=cl)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    none = contextlib.nullcontext
    nets = {
        "fp32 NCHW": (base, x, none),
        "fp32 channels_last": (copy.deepcopy(base).to(memory_format=cl), xc, none),
        "bf16 autocast + channels_last": (copy.deepcopy(base).to(memory_format=cl), xc, bf16),
        "bf16 weights + channels_last": (copy.deepcopy(base).to(memory_format=cl).to(torch.bfloat16),
                                         xc.to(torch.bfloat16), none),
        "bf16 autocast + BN folded": (fuse(copy.deepcopy(base)).to(memory_format=cl), xc, bf16),
    }
    compile_seconds = None
    if not args.no_compile:
        net = torch.compile(copy.deepcopy(base).to(memory_format=cl), options={"freezing": True})
        with torch.inference_mode(), bf16():
            t0 = time.perf_counter()
            net(xc)
            compile_seconds = time.perf_counter() - t0
        nets["bf16 autocast + torch.compile (freezing)"] = (net, xc, bf16)

    with torch.inference_mode():
        with bf16():
            reference = nets["bf16 autocast + channels_last"][0](xc).float()
        diff = {}
        for name, (net, inp, ctx) in nets.items():
            with ctx():
                diff[name] = float((net(inp).float() - reference).abs().max())  # also the warm-up
        totals = {name: [0.0, 0] for name in nets}
        for r in range(args.rounds):
            for name in (list(nets) if r % 2 == 0 else list(nets)[::-1]):
                net, inp, ctx = nets[name]
                with ctx():
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        net(inp)
                    totals[name][0] += time.perf_counter() - t0
                    totals[name][1] += args.steps * BATCH
    ips = {name: n / t for name, (t, n) in totals.items()}
    fp32 = ips["fp32 NCHW"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {SIZE} px, "
          f"{args.rounds} interleaved rounds x {args.steps} batches")
    print("\n| variant | images/s | vs fp32 NCHW | max abs logit diff vs bf16 autocast |\n|---|---|---|---|")
    for name, v in ips.items():
        print(f"| {name} | {v:.1f} | {v / fp32:.2f}x | {diff[name]:.3g} |")
    if compile_seconds is not None:
        print(f"\ntorch.compile (freezing): first batch took {compile_seconds:.1f} s (compiling)")


if __name__ == "__main__":
    main()
