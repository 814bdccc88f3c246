"""``sskt export``: write a checkpoint's target alone (torch.export, TorchScript, ONNX, safetensors or sskt's
own file).

The engine is imported when the command runs: ``sskt --help`` stays fast.
"""
from __future__ import annotations

import argparse

from sskt.commands.kit import command


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (out_dir/checkpoints/last.ckpt)")
    p.add_argument("output", help="where to write the model file, e.g. target.pt, target.pt2, target.onnx; a "
                                  "model card goes to <output>.md")
    p.add_argument("--format", choices=["sskt", "pt2", "torchscript", "onnx", "safetensors"], default=None,
                   help="default: from the output's suffix (.pt sskt, .pt2 torch.export, .ts/.torchscript, .onnx, "
                        ".safetensors), else sskt; for PyTorch deployment prefer pt2 (torch.jit is deprecated)")


@command("export", "write the target alone (main head only, no auxiliary heads or sources)", _export_args)
def run_export(args: argparse.Namespace) -> int:
    from sskt.engine.export import export

    written = export(args.checkpoint, args.output, args.format)
    print(f"wrote {written.path} ({written.format})")
    print(f"wrote {written.card} (model card)")
    return 0
