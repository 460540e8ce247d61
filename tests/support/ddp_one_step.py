"""One DDP optimisation step on rank-specific data (run with torchrun; used by tests/engine/test_distributed.py).

``torchrun --nproc_per_node N ddp_one_step.py OUT``: every rank builds the same small Attention U-Net,
takes one :class:`medattn.engine.step.Stepper` step on its own random batch (B=1, 1×16×16×8) and saves
its parameters before and after, its local loss and the rank-averaged loss to ``OUT/rank<R>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from medattn.engine.distributed import distributed_context, unwrap, wrap_model
from medattn.engine.losses import DeepSupervisionLoss, DiceCELoss
from medattn.engine.step import Stepper
from medattn.models import create_model

out = Path(sys.argv[1])
with distributed_context("cpu", timeout_s=60) as ctx:
    torch.manual_seed(ctx.rank)  # deliberately different initial weights: DDP must broadcast rank 0's
    net = create_model("attention_unet", spatial_dims=3, in_channels=1, out_channels=3, channels=[4, 8])
    model = wrap_model(net, ctx)
    before = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
    g = torch.Generator().manual_seed(100 + ctx.rank)
    batch = {"image": torch.randn(1, 1, 16, 16, 8, generator=g),
             "label": torch.randint(0, 3, (1, 1, 16, 16, 8), generator=g)}
    loss_fn = DeepSupervisionLoss(DiceCELoss(3))
    local = []

    def loss_of(b: dict) -> torch.Tensor:
        loss = loss_fn(model(b["image"]), b["label"])
        local.append(float(loss))
        return loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stepper = Stepper(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), ctx, grad_clip=12.0)
    mean = stepper.epoch([batch], 1, loss_of, lambda loss, step: RuntimeError(f"loss {loss}"))
    torch.save({"before": before, "after": unwrap(model).state_dict(), "local_loss": local[0], "mean_loss": mean[0],
                "world_size": ctx.world_size}, out / f"rank{ctx.rank}.pt")
