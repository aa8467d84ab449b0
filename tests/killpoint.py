"""Run ``clara-lite`` and have it signal itself at an exact point: the first model forward after a file exists.

Why: a test that waits for step 4's checkpoint and then sends SIGKILL from outside races the run, which on a
fast or idle machine can finish steps 5-6 and write ``final/`` between two polls (CI saw exactly that). Here
the kill comes from inside, at the start of the next forward pass once the file is on disk, so the process
always dies after the checkpoint is complete and before the next step can change anything. Nothing of
clara_lite is replaced: a global torch forward pre-hook sends a real signal to the real process.

    python tests/killpoint.py WHEN_FILE SIGNAL_NAME clara-lite-args...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from clara_lite.cli import main
from clara_lite.model.modeling import ClaraModel


def arm(when: Path, sig: signal.Signals) -> None:
    """Send ``sig`` to this process once, at the first ClaraModel forward that starts after ``when`` exists."""
    fired = []

    def hook(module, _args):
        if isinstance(module, ClaraModel) and not fired and when.is_file():
            fired.append(True)
            os.kill(os.getpid(), sig)

    torch.nn.modules.module.register_module_forward_pre_hook(hook)


if __name__ == "__main__":
    arm(Path(sys.argv[1]), signal.Signals[f"SIG{sys.argv[2]}"])
    sys.exit(main(sys.argv[3:]))
