"""Run a short training of the tiny test net in a fresh process.

usage: python _worker.py OUTPUT_DIR [KEY=VALUE ...]
Under torchrun each rank trains (DDP) and saves its weights to OUTPUT_DIR/../rank<R>.pt.
"""

import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _trainkit import make_trainer  # noqa: E402

from vmunet.train.distributed import shutdown_distributed  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
trainer = make_trainer(out if rank == 0 else out.with_name(out.name + f"_rank{rank}"), sys.argv[2:])
trainer.fit()
if trainer.dist.enabled:
    torch.save(trainer.raw_model.state_dict(), out.parent / f"rank{rank}.pt")
    # As vmunet.train.trainer.train does: release DDP (it holds the process group) before destroying the
    # group, or the group's gloo threads are torn down at interpreter exit and may abort the rank.
    info = trainer.dist
    del trainer
    gc.collect()
    shutdown_distributed(info)
