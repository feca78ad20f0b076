"""Two-process DDP training on CPU (gloo) through torchrun: both ranks end with the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_training_run import make_spheres


def test_torchrun_two_ranks_identical_weights(tmp_path):
    data = make_spheres(tmp_path / "spheres", n=6)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medseg", "train", "--data", str(data), "-o", str(run), "--device", "cpu",
           "--max-epochs", "2", "--steps-per-epoch", "2", "--patch-size", "16,16,16", "--filters", "8,16,32",
           "--batch-size", "2", "--num-workers", "0", "--folds", "2", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((run / "final.json").read_text())
    hashes = final["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert final["step"] == 4
    # rank 0 alone wrote the outputs: one metrics row per epoch, no temp leftovers
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3
    assert not list(run.glob(".*partial*"))
