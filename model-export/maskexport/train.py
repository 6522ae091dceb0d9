"""Train torchvision Mask R-CNN from scratch on a COCO-format data set (CPU or GPU)."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .coco import CocoInstances
from .evaluate import coco_metrics, predict_coco
from .model import build_model, save_checkpoint


def collate(batch: list) -> tuple:
    return tuple(zip(*batch))


def _lr_at(it: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay over ``progress`` in [0, 1]."""
    if it < warmup:
        return base * (0.001 + 0.999 * it / warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    train_dir: Path,
    out_checkpoint: Path,
    arch: str = "tiny-fpn",
    iterations: int = 3000,
    batch_size: int = 4,
    lr: float = 0.02,
    val_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    threads: int | None = None,
    seed: int = 0,
    log_every: int = 50,
    time_budget_s: float | None = None,
    init: Path | None = None,
    warmup: int | None = None,
) -> dict[str, float]:
    """Train for ``iterations`` steps; writes the checkpoint and returns val metrics (if any).

    With ``time_budget_s`` the schedule also ends when the wall-clock budget is spent: the cosine
    decay follows whichever of iterations and time is further along, so a slow or shared machine
    still finishes with a fully annealed model (the log says how many iterations that took).

    Runs under torch.distributed when WORLD_SIZE > 1 (each rank sees a shard of the data).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    device = torch.device("cpu")
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
    elif torch.cuda.is_available():
        device = torch.device("cuda")

    ds = CocoInstances(train_dir / "images", train_dir / "annotations.json")
    classes = ["__background__", *ds.class_names]
    model = build_model(arch, len(classes))
    if init is not None:
        # Continue from a checkpoint (a warm restart of the schedule), e.g. to train longer.
        ckpt = torch.load(init, map_location="cpu", weights_only=True)
        if ckpt["arch"] != arch or ckpt["classes"] != classes:
            raise ValueError(f"{init} holds {ckpt['arch']} for {ckpt['classes']}, not {arch} for {classes}")
        model.load_state_dict(ckpt["state_dict"])
    model = model.to(device)
    sampler = torch.utils.data.DistributedSampler(ds, seed=seed) if distributed else None
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate,
        num_workers=0,
        drop_last=True,
    )
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    if warmup is None:
        warmup = min(300, iterations // 10)
    it, epoch, start = 0, 0, time.time()
    model.train()

    def progress() -> float:
        # Warm-up counts against neither clock; the decay spans the rest.
        p = (it - warmup) / max(1, iterations - warmup)
        if time_budget_s:
            p = max(p, (time.time() - start) / time_budget_s)
        return p

    while it < iterations and progress() < 1.0:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for images, targets in loader:
            if it >= iterations or progress() >= 1.0:
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(it, progress(), lr, warmup)
            images = [i.to(device) for i in images]
            targets = [
                {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
            ]
            losses = ddp_model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            it += 1
            if rank == 0 and (it % log_every == 0 or it == 1):
                parts = " ".join(f"{k[5:]}={v.item():.3f}" for k, v in losses.items())
                print(
                    f"it {it}/{iterations} loss={loss.item():.3f} {parts} "
                    f"lr={opt.param_groups[0]['lr']:.4f} {time.time() - start:.0f}s",
                    flush=True,
                )
            if rank == 0 and checkpoint_dir and it % 500 == 0:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_checkpoint(str(checkpoint_dir / "checkpoint.pt"), model, arch, classes)
        epoch += 1
    metrics: dict[str, float] = {}
    if rank == 0:
        print(f"trained {it} iterations in {time.time() - start:.0f}s", flush=True)
        model.eval().cpu()
        out_checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(str(out_checkpoint), model, arch, classes)
        if val_dir is not None:
            val = CocoInstances(val_dir / "images", val_dir / "annotations.json")
            metrics = coco_metrics(val, predict_coco(model, val))
            print(json.dumps(metrics), flush=True)
    if distributed:
        dist.destroy_process_group()
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=Path, required=True, help="dir with images/ and annotations.json")
    p.add_argument("--val", type=Path)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--arch", default="tiny-fpn")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget-min", type=float, help="also end the schedule after this many minutes")
    p.add_argument("--checkpoint-dir", type=Path)
    p.add_argument("--init", type=Path, help="start from this checkpoint (warm restart)")
    p.add_argument("--warmup", type=int, help="warm-up iterations (default min(300, iterations/10))")
    a = p.parse_args(argv)
    budget = a.time_budget_min * 60 if a.time_budget_min else None
    train(
        a.train,
        a.out,
        a.arch,
        a.iterations,
        a.batch_size,
        a.lr,
        a.val,
        a.checkpoint_dir,
        a.threads,
        a.seed,
        time_budget_s=budget,
        init=a.init,
        warmup=a.warmup,
    )


if __name__ == "__main__":
    main()
