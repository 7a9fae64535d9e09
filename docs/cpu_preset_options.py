"""Do the speed options pay on this CPU? The quarter-width VGG16-BN preset's training speed
(bf16 autocast) at batch 128, with channels_last, with torch.compile, and at batch 512. Real
Lightning fits, interleaved repeat by repeat (cvexp.benchmarks.framework_overhead.measure); each option's
figure is a ratio of medians. Run on a quiet machine (about 5 minutes on 2 cores):

    python docs/cpu_preset_options.py DATA_ROOT OUT.json
"""

import json
import shutil
import sys
from pathlib import Path

import torch

from cvexp.benchmarks import framework_overhead

PRESET = ("model.net.width=0.25", "model.net.dropout=0.0", "trainer.precision=bf16-mixed")
results = {"torch_threads": torch.get_num_threads()}
for name, batch, steps, options in (
    ("batch128", 128, 40, ("channels_last", "compile")),
    ("batch512", 512, 10, ()),
):
    workdir = framework_overhead.make_workdir()
    try:
        results[name] = framework_overhead.measure(
            data_root=Path(sys.argv[1]),
            workdir=workdir,
            model="vgg16_bn",
            model_overrides=PRESET,
            batch_size=batch,
            warmup=3,
            steps=steps,
            repeats=3,
            options=options,
            device="cpu",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours = results[name]["framework_overhead"]["ours_images_per_s"]
    print(
        name,
        "img/s",
        ours,
        {k: v["speedup"] for k, v in results[name]["options"].items()},
        flush=True,
    )
Path(sys.argv[2]).write_text(json.dumps(results, indent=1, default=str))
