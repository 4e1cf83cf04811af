"""The SAE training loop: streamed shards, data-driven init, Adam with warm-up and decay.

Each step: scale a batch by the fixed ``activation_scale``, compute loss and gradients with the
fast sparse step (:func:`medseglens_core.sae.step.fast_step`), drop the gradient component
along each decoder row, take an Adam step, renormalise decoder rows to unit norm, advance the
LR schedule and the dead-latent counters. Progress goes to an optional tqdm bar, and every
``progress_every`` steps to ``progress(dict)``; ``should_stop()`` is polled every step and ends
training early (the SAE trained so far is returned, with ``metrics["stopped"] = True``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from medseglens_core.models.inference import resolve_device
from medseglens_core.sae.base import SAE, SAEConfig, build_sae
from medseglens_core.sae.errors import InvalidSAEConfig
from medseglens_core.sae.metrics import reconstruction_metrics
from medseglens_core.sae.shards import ActivationShards
from medseglens_core.sae.step import StepStats, fast_step

__all__ = ["estimate_scale", "geometric_median", "init_from_data", "lr_factor", "resolve_device", "train_sae"]

StepFn = Callable[[SAE, torch.Tensor, "torch.Tensor | None"], StepStats]


def _fused_ok(dev: torch.device) -> bool:
    """Fused Adam (one kernel for all parameters, ~8x faster than the per-tensor loop on CPU)."""
    return dev.type in ("cpu", "cuda")


def estimate_scale(x: torch.Tensor) -> float:
    """Scalar ``s`` with ``mean_n ||s * x_n||^2 == d_in`` for tokens ``x (N, d_in)``."""
    ms = float(x.double().pow(2).sum(1).mean())
    if not ms > 0:
        raise InvalidSAEConfig("activation sample is all zeros; cannot estimate the activation scale")
    return math.sqrt(x.shape[1] / ms)


def geometric_median(x: torch.Tensor, iters: int = 20, eps: float = 1e-8) -> torch.Tensor:
    """Geometric median ``(d,)`` of points ``x (N, d)`` by Weiszfeld iterations from the mean."""
    xd = x.double()
    med = xd.mean(0)
    for _ in range(iters):
        w = 1.0 / (xd - med).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * xd).sum(0) / w.sum()
        if (new - med).norm() < eps * (1 + med.norm()):
            med = new
            break
        med = new
    return med.float()


@torch.no_grad()
def init_from_data(sae: SAE, sample: torch.Tensor) -> None:
    """Set ``cfg.activation_scale`` (if unset) and ``b_dec`` from unscaled tokens ``(N, d_in)``."""
    if sae.cfg.activation_scale is None:
        sae.cfg.activation_scale = estimate_scale(sample)
    xs = sample.to(sae.b_dec.device) * sae.scale
    if sae.cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(xs))
    elif sae.cfg.b_dec_init == "mean":
        sae.b_dec.copy_(xs.mean(0))


def lr_factor(step: int, total: int, cfg: SAEConfig) -> float:
    """LR multiplier at ``step`` of ``total``: linear warm-up, then cosine/linear decay/constant."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.decay == "none" or total <= cfg.warmup:
        return 1.0
    t = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if cfg.decay == "cosine" else 1.0 - t
    return cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * shape


def _total_steps(cfg: SAEConfig, token_budget: int | None, steps: int | None, n_tokens: int) -> int:
    if steps is not None:
        total = int(steps)
    elif token_budget is not None:
        total = int(token_budget) // cfg.batch_size
    else:
        total = n_tokens // cfg.batch_size
    if total < 1:
        raise InvalidSAEConfig(
            f"training would run 0 steps (batch_size={cfg.batch_size}); give more tokens or steps"
        )
    return total


def train_sae(
    cfg: SAEConfig,
    shards: ActivationShards,
    *,
    eval_shards: ActivationShards | None = None,
    token_budget: int | None = None,
    steps: int | None = None,
    device: str | torch.device = "auto",
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every: int = 50,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = False,
    buffer_tokens: int = 262_144,
    eval_tokens: int = 131_072,
    step_fn: StepFn = fast_step,
    sae: SAE | None = None,
) -> tuple[SAE, dict[str, Any]]:
    """Train an SAE on streamed activation shards.

    Args:
        cfg: the SAE config; ``d_in`` must match the shards. ``activation_scale`` is estimated
            from a sample when ``None``.
        shards: training tokens. eval_shards: held-out tokens for the final metrics (if absent,
            metrics are computed on a sample of the training tokens and say so).
        token_budget / steps: length of training (steps wins; default: one pass over the shards).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda[:i]``.
        progress: called every ``progress_every`` steps with ``{step, total_steps, tokens, loss,
            mse, explained_variance, l0, dead_fraction, lr, tokens_per_s}``.
        should_stop: polled every step; returning True ends training early.
        show_progress: show a tqdm bar on stderr.
        step_fn: the step implementation (the reference one is for benchmarks and tests).
        sae: start from these weights instead of a fresh init (its ``cfg`` must be ``cfg``);
            the data-driven init then only fills a missing ``activation_scale``.

    Returns:
        ``(sae, metrics)``: the SAE in eval mode on ``device``; metrics from
        :func:`~medseglens_core.sae.metrics.reconstruction_metrics` plus training facts
        (``train_steps, train_tokens, train_seconds, train_dead_fraction, stopped, eval_on``).
    """
    if shards.d_in != cfg.d_in:
        raise InvalidSAEConfig(f"cfg.d_in={cfg.d_in} but the activations have d_in={shards.d_in}")
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    if sae is None:
        sae = build_sae(cfg).to(dev)
        init_from_data(sae, shards.sample(16_384, seed=cfg.seed))
    else:
        if sae.cfg is not cfg:
            raise InvalidSAEConfig("train_sae(sae=...) needs sae.cfg to be the cfg passed in")
        sae = sae.to(dev).train()
        if cfg.activation_scale is None:
            cfg.activation_scale = estimate_scale(shards.sample(16_384, seed=cfg.seed))
    total = _total_steps(cfg, token_budget, steps, shards.n_tokens)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=_fused_ok(dev))
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=dev)
    bar = _bar(total, show_progress)
    stopped, done, t0 = False, 0, time.perf_counter()
    stream = shards.iter_batches(cfg.batch_size, buffer_tokens=buffer_tokens, seed=cfg.seed)
    for batch in stream:
        if done >= total:
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        step = done
        done += 1
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, total, cfg)
        dead = since_fired >= cfg.liveness_window
        stats = step_fn(sae, batch.to(dev, non_blocking=True) * sae.scale, dead)
        sae.remove_parallel_grad_()
        opt.step()
        sae.normalize_decoder_()
        since_fired += batch.shape[0]
        since_fired[stats.fired] = 0
        if bar is not None or (progress is not None and step % progress_every == 0):
            info = _info(stats, step, total, cfg, dead, opt, t0)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats.loss:.4g}",
                    ev=f"{stats.explained_variance:.3f}",
                    l0=f"{stats.l0:.1f}",
                    dead=f"{info['dead_fraction']:.1%}",
                )
            if progress is not None and step % progress_every == 0:
                progress(info)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    sae.eval()
    held = eval_shards if eval_shards is not None else shards
    metrics = reconstruction_metrics(sae, held.iter_tokens(), max_tokens=eval_tokens)
    metrics.update(
        train_steps=done,
        train_tokens=done * cfg.batch_size,
        train_seconds=seconds,
        train_dead_fraction=float((since_fired >= cfg.liveness_window).float().mean()),
        stopped=stopped,
        eval_on="held_out" if eval_shards is not None else "train_sample",
        device=str(dev),
    )
    return sae, metrics


def _info(stats: StepStats, step: int, total: int, cfg: SAEConfig, dead, opt, t0: float) -> dict[str, Any]:
    tokens = (step + 1) * cfg.batch_size
    return {
        "step": step,
        "total_steps": total,
        "tokens": tokens,
        "loss": stats.loss,
        "mse": stats.mse,
        "explained_variance": stats.explained_variance,
        "l0": stats.l0,
        "dead_fraction": float(dead.float().mean()),
        "lr": opt.param_groups[0]["lr"],
        "tokens_per_s": tokens / max(1e-9, time.perf_counter() - t0),
    }


def _bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train-sae", unit="step")
