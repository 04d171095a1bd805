"""The novelty memory is part of the checkpoint: kill -9 and resume continue the run exactly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# A training process: the toy system, the ast sampler with the novelty bonus (a memory smaller
# than one step's probes, so it wraps), the registered dpo. Arguments: run directory, steps. It
# resumes when the run directory holds a checkpoint; prints "step N" after each step, then "done"
# and the sampler's state.
SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from astra_ast.sampler import ASTSampler
from astra_core import checkpoint
from astra_core.callbacks import BaseCallback
from astra_core.config import TrainingConfiguration
from astra_core.plugins import discover
from astra_core.testing.toy import ToyScorer, ToySystem
from astra_core.trainer import Trainer, seed_everything

run_dir, steps = sys.argv[1], int(sys.argv[2])
seed_everything(0)
system = ToySystem(seed=0)
sampler = ASTSampler(system, ToyScorer(), tree_width=2, tree_depth=2, nu=0.5, novelty_memory=12)
registries = discover().registries
algorithm = registries["algorithm"].get("dpo").build(system, options={})
config = TrainingConfiguration(
    training_steps=steps, num_episodes_per_experience=3, batch_size=4, lr=0.05,
    output_dir=run_dir, checkpoint_every=1, keep_checkpoints=20,
)

class Report(BaseCallback):
    def on_step_end(self, trainer, step, logs):
        print("step", step, flush=True)

trainer = Trainer(config, sampler, algorithm, callbacks=[Report()], registries=registries)
if checkpoint.latest_checkpoint(run_dir) is not None:
    trainer.resume()
    print("resumed", trainer.global_step, flush=True)
trainer.train()
print("done", json.dumps(sampler.state_dict()), flush=True)
"""


def _launch(run_dir: Path, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(run_dir), str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _finish(run_dir: Path, steps: int) -> list[str]:
    process = _launch(run_dir, steps)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out.splitlines()


def _weights(run_dir: Path, steps: int) -> list[torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / f"step-{steps:08d}" / "weights.safetensors"))
    return [tensors[key] for key in sorted(tensors)]


def test_kill_9_then_resume_restores_the_novelty_memory_exactly(tmp_path: Path) -> None:
    steps = 5
    reference = _finish(tmp_path / "reference", steps)

    run_dir = tmp_path / "run"
    process = _launch(run_dir, steps)
    assert process.stdout is not None
    for line in process.stdout:
        if re.fullmatch(r"step 3", line.strip()):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    state = json.loads((run_dir / "checkpoints" / "step-00000002" / "state.json").read_text(encoding="utf-8"))
    assert len(state["sampler"]["novelty_memory"]["probes"]) == 12  # the memory is in the checkpoint

    resumed = _finish(run_dir, steps)
    assert re.fullmatch(r"resumed [23]", resumed[0])
    assert resumed[-1] == reference[-1]  # the same memory at the end
    pairs = zip(_weights(run_dir, steps), _weights(tmp_path / "reference", steps), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
