"""Images per second of the pieces the recommended recipe spends its time in, on one device: the target's
training step (CIFAR ResNet-20, batch 128: fp32 NCHW against bf16 autocast + channels_last) and the source's
inference as the soft-label cache build runs it (EfficientNet-Lite0 at 96 px: NCHW / channels_last, fp32 / bf16,
batch 32 and 256).

    OMP_NUM_THREADS=1 python benchmarks/step_throughput.py --device cpu --seconds 5
    python benchmarks/step_throughput.py --device cuda --seconds 5 --json gpu.json

Each configuration runs for ``--seconds`` after a warm-up; the rate is images (or source views) per second of
wall time on that device (CUDA synchronised), with the CPU time beside it on a CPU. Rounds are interleaved, so a
noisy machine slows every configuration alike; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def _rate(step, images_per_call: int, seconds: float, device: torch.device) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of ``step`` run for about ``seconds``."""
    step()  # warm-up: allocation, kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize()
    calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds or calls < 2:
        step()
        calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return calls * images_per_call / wall, calls * images_per_call / max(cpu, 1e-9)


def training_steps(device: torch.device, seconds: float, batch: int = 128) -> dict[str, tuple[float, float]]:
    from sskt.models.target import TargetNetwork

    out = {}
    for name, bf16, channels_last in (("fp32 NCHW", False, False), ("bf16 + channels_last", True, True)):
        torch.manual_seed(0)
        net = TargetNetwork("cifar_resnet20", 10).to(device)
        x = torch.rand(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        if channels_last:
            net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        out[f"train step, {name}, batch {batch}"] = _rate(step, batch, seconds, device)
    return out


def source_passes(device: torch.device, seconds: float) -> dict[str, tuple[float, float]]:
    from sskt.experiments.distill_plan import source_network

    out = {}
    src = source_network(96).to(device)
    for batch in (32, 256):
        for name, bf16, channels_last in (("fp32 NCHW", False, False), ("fp32 channels_last", False, True),
                                          ("bf16 channels_last", True, True)):
            net = src.network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            x = torch.rand(batch, 3, 96, 96, device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            def step() -> None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    net(src.normalize(x))

            out[f"source Lite0 96 px, {name}, batch {batch}"] = _rate(step, batch, seconds, device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", default=None, help="also write the rates to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = {**training_steps(device, args.seconds), **source_passes(device, args.seconds)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"| {name} | images/s | images per CPU second |\n|---|---|---|")
    for key, (wall, cpu) in rows.items():
        print(f"| {key} | {wall:.0f} | {cpu:.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "rates": {k: {"per_s": v[0], "per_cpu_s": v[1]} for k, v in rows.items()}},
                      fh, indent=2)


if __name__ == "__main__":
    main()
