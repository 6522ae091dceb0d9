"""Train torchvision Mask R-CNN from scratch on a COCO-format data set (CPU or GPU)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from .coco import CocoInstances
from .evaluate import coco_metrics, predict_coco
from .metrics_log import train_done_line, train_line, val_line
from .model import build_model, save_checkpoint

# Long enough for any real step or checkpoint save on a multi-host GPU job; short enough that a
# job whose peer died or was cut off fails instead of waiting for the SageMaker runtime limit.
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0


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
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
    metrics_out: Path | None = None,
    min_sizes: tuple[int, ...] | None = None,
    max_size: int | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """Train for ``iterations`` steps; writes the checkpoint and returns val metrics (if any).

    With ``time_budget_s`` the schedule also ends when the wall-clock budget is spent: the cosine
    decay follows whichever of iterations and time is further along, so a slow or shared machine
    still finishes with a fully annealed model (the log says how many iterations that took).

    Runs under torch.distributed when WORLD_SIZE > 1 (each rank sees a shard of the data): every
    collective, and joining the process group, fails after ``collective_timeout_s`` instead of
    waiting for a peer that died or was cut off. Rank 0 logs (images/s counts all ranks), writes
    the checkpoint and, with ``val_dir``, evaluates, logs the metrics and writes ``metrics_out``.

    ``min_sizes`` / ``max_size`` train at several scales (torchvision picks one short side per
    batch); evaluation and the checkpoint's model keep the architecture's own sizes.

    ``amp`` runs the forward pass and the losses under ``torch.autocast`` (float16) with a
    ``torch.amp.GradScaler``; CUDA only (a ValueError on the CPU).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    rank = 0
    device = torch.device("cpu")
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=collective_timeout_s))
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    if amp and device.type != "cuda":
        raise ValueError("amp (float16 autocast + GradScaler) needs a CUDA device; this run is on the CPU")

    ds = CocoInstances(train_dir / "images", train_dir / "annotations.json")
    classes = ["__background__", *ds.class_names]
    model = build_model(arch, len(classes))
    if init is not None:
        # Continue from a checkpoint (a warm restart of the schedule), e.g. to train longer.
        ckpt = torch.load(init, map_location="cpu", weights_only=True)
        if ckpt["arch"] != arch or ckpt["classes"] != classes:
            raise ValueError(f"{init} holds {ckpt['arch']} for {ckpt['classes']}, not {arch} for {classes}")
        model.load_state_dict(ckpt["state_dict"])
    test_sizes = (model.transform.min_size, model.transform.max_size)
    if min_sizes:
        model.transform.min_size = tuple(min_sizes)
    if max_size:
        model.transform.max_size = max_size
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
    if len(loader) == 0:
        # Otherwise the loop below would spin for ever without a single step.
        raise ValueError(
            f"{train_dir}: {len(ds)} images give no full batch of {batch_size} per rank "
            f"(world size {world}); lower batch_size or add images"
        )
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    # Disabled (without amp) it passes the loss and the step through unchanged.
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    if warmup is None:
        warmup = min(300, iterations // 10)
    it, epoch, start = 0, 0, time.time()
    logged_it, logged_t = 0, start
    model.train()

    def progress() -> float:
        # Warm-up counts against neither clock; the decay spans the rest.
        p = (it - warmup) / max(1, iterations - warmup)
        if time_budget_s:
            p = max(p, (time.time() - start) / time_budget_s)
            if distributed:
                # Clocks differ between hosts: all ranks follow the one furthest along, so none
                # stops a step before the others (which would leave them waiting in a collective).
                t = torch.tensor([p], dtype=torch.float64, device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                p = float(t.item())
        return p

    p = progress()
    while it < iterations and p < 1.0:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for images, targets in loader:
            if it >= iterations or p >= 1.0:
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(it, p, lr, warmup)
            images = [i.to(device) for i in images]
            targets = [
                {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
            ]
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                losses = ddp_model(images, targets)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}")
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            scaler.step(opt)
            scaler.update()
            it += 1
            if rank == 0 and (it % log_every == 0 or it == 1):
                now = time.time()
                # Steps are in lock-step across ranks, so rank 0's clock times the whole world.
                rate = (it - logged_it) * batch_size * world / max(now - logged_t, 1e-9)
                parts = {k: v.item() for k, v in losses.items()}
                lr_now = opt.param_groups[0]["lr"]
                print(train_line(it, iterations, loss.item(), lr_now, rate, now - start, parts), flush=True)
                logged_it, logged_t = it, now
            if rank == 0 and checkpoint_dir and it % 500 == 0:
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_checkpoint(str(checkpoint_dir / "checkpoint.pt"), model, arch, classes)
            p = progress()
        epoch += 1
    metrics: dict[str, float] = {}
    if rank == 0:
        elapsed = time.time() - start
        print(train_done_line(it, elapsed, it * batch_size * world / max(elapsed, 1e-9)), flush=True)
        model.eval().cpu()
        model.transform.min_size, model.transform.max_size = test_sizes
        out_checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(str(out_checkpoint), model, arch, classes)
        if val_dir is not None:
            val = CocoInstances(val_dir / "images", val_dir / "annotations.json")
            metrics = coco_metrics(val, predict_coco(model, val))
            print(val_line(metrics, len(val)), flush=True)
            if metrics_out is not None:
                metrics_out.parent.mkdir(parents=True, exist_ok=True)
                metrics_out.write_text(json.dumps(metrics))
    if distributed:
        dist.destroy_process_group()
    return metrics


def die_with_parent() -> None:
    """Under torchrun: end this worker when its agent dies, however it dies.

    torchrun starts each worker in a session of its own and stops it when the agent is asked to
    stop; an agent that is killed outright (OOM killer, SIGKILL) would leave the worker training on
    alone, its peers none the wiser. On Linux the kernel sends it SIGKILL instead.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the agent was gone before the line above
        os._exit(1)


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
    p.add_argument("--log-every", type=int, default=50, help="log a [train] line every N iterations")
    p.add_argument(
        "--collective-timeout-s",
        type=float,
        default=DEFAULT_COLLECTIVE_TIMEOUT_S,
        help="distributed: fail when joining the group or a collective takes longer than this",
    )
    p.add_argument("--metrics-out", type=Path, help="write the val metrics (JSON) here")
    p.add_argument(
        "--min-sizes",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        help="train at these short sides, one drawn per batch (e.g. 224,256,288,320)",
    )
    p.add_argument("--max-size", type=int, help="training's long-side cap (with --min-sizes)")
    p.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (CUDA only)")
    p.add_argument("--failure-dir", type=Path, help="on failure, write rank<N>.txt saying why here")
    a = p.parse_args(argv)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    budget = a.time_budget_min * 60 if a.time_budget_min else None
    try:
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
            log_every=a.log_every,
            time_budget_s=budget,
            init=a.init,
            warmup=a.warmup,
            collective_timeout_s=a.collective_timeout_s,
            metrics_out=a.metrics_out,
            min_sizes=a.min_sizes,
            max_size=a.max_size,
            amp=a.amp,
        )
    except Exception as e:
        if a.failure_dir is not None:
            a.failure_dir.mkdir(parents=True, exist_ok=True)
            rank = os.environ.get("RANK", "0")
            text = f"{describe_failure(e, a.collective_timeout_s)}\n\n{traceback.format_exc()}"
            (a.failure_dir / f"rank{rank}.txt").write_text(text)
        raise


def describe_failure(e: BaseException, collective_timeout_s: float) -> str:
    """One line: which rank on which host failed, and why (a lost peer said in plain words)."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    who = f"rank {rank} of {world} on host {socket.gethostname()}"
    first = (str(e).strip().splitlines() or [""])[0]
    why = f"{type(e).__name__}: {first}"
    if isinstance(e, dist.DistError) or "gloo" in str(e).lower() or "nccl" in str(e).lower():
        lowered = str(e).lower()
        if "timed out" in lowered or "timeout" in lowered:
            why += (
                f" (timed out after collective_timeout_s={collective_timeout_s:g}: "
                "a peer stopped responding; it died, hung or its network was cut)"
            )
        else:
            why += " (lost contact with a peer: it died or its network failed)"
    return f"{who} failed: {why}"


if __name__ == "__main__":
    main()
