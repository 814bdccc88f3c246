"""Zero-shot mAP of the CIFAR-10 source checkpoints on the test mosaics, at 32 px (mosaic resized) and
64 px (native tiles): how informative each source input size is for the multi-label benchmark.

Run from the repo root: /work/venv/bin/python benchmarks/mosaic_source_map.py
"""
import time, torch
from sskt.data import DataConfig, load_data
from sskt.sources.source import build_source
from sskt.metrics import classwise_map
from sskt.data.augment import to_float
torch.set_num_threads(1)
s = load_data(DataConfig(dataset='cifar-mosaic', root='../shared/datasets/cifar10-jpeg', options={'train_mosaics': 100, 'test_mosaics': 1000}))
x = to_float(s.test.images); y = s.test.targets
for arch, ck in [("cifar_resnet32", "resnet32-d509ac18.th"), ("cifar_resnet44", "resnet44-014dd654.th")]:
    for size in (32, 64):
        src = build_source({"name": "a", "arch": arch, "checkpoint": f"../shared/weights/cifar10-resnets/{ck}", "input_size": size})
        t = time.time()
        with torch.no_grad():
            z = torch.cat([src(x[i:i+250]) for i in range(0, len(x), 250)])
        m, _ = classwise_map(z, y)
        m2, _ = classwise_map(torch.softmax(z, 1), y)
        print(arch, size, f"mAP logits {m*100:.2f} probs {m2*100:.2f}  {time.time()-t:.1f}s", flush=True)
