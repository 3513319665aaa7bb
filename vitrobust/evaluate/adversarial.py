"""Adversarial benchmarks: `pgd`, `autoattack` and `eps_sweep`, each with self-checks.

All read `cfg.evaluate.attack` (AttackConfig) and attack a balanced sample of `attack.subset` images of the
evaluation split, sharded over ranks. Every result holds `checks: {name: {ok, detail}}`; a failed
check is also emitted as a `CheckWarning`. Misuse (a model in train mode, probabilities instead of
logits, eps outside the valid range, images outside [0,1]) raises InputError.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from vitrobust.attacks.autoattack import (
    AutoAttackResult,
    AutoAttackSpec,
    autoattack_chunks,
    check_eps,
    model_in_eval_mode,
    square_check,
)
from vitrobust.attacks.pgd import pgd_attack
from vitrobust.attacks.straight_through import attack_gradients, resolve_gradient
from vitrobust.config import AttackConfig
from vitrobust.data import BatchLoader, ImageSet
from vitrobust.distributed import all_gather_objects
from vitrobust.errors import InputError
from vitrobust.evaluate.core import COST_HOURS, PER_IMAGE, EvalContext, per_image, register_benchmark

LARGE_EPS_LINF = 0.5  # every image can reach mid-grey: an attack that works gets accuracy ~0
LARGE_EPS_MAX_TOP1 = 0.05
SQUARE_TOLERANCE = 0.002  # the authors' threshold (checks.check_square_sr)


class CheckWarning(UserWarning):
    """A self-check of an adversarial benchmark failed: the evaluation may be unreliable."""


def _check(ok: bool, detail: str) -> dict:
    return {"ok": bool(ok), "detail": detail}


def _warn_failed(name: str, checks: dict, ctx: EvalContext) -> None:
    if not ctx.dist.main:
        return
    for key, check in checks.items():
        if not check["ok"]:
            warnings.warn(f"{name}: self-check '{key}' failed: {check['detail']}", CheckWarning, stacklevel=3)


# --- data ------------------------------------------------------------------------------------


def attack_data(ctx: EvalContext) -> ImageSet:
    return ctx.data.subset(ctx.cfg.evaluate.attack.subset, ctx.cfg.data.subset_seed)


def attack_batch_size(ctx: EvalContext) -> int:
    return ctx.cfg.evaluate.attack.batch_size or ctx.batch_size


def _loader(ctx: EvalContext, data: ImageSet, batch_size: int, sharded: bool = True) -> BatchLoader:
    rank, world = (ctx.dist.rank, ctx.dist.world) if sharded else (0, 1)
    return BatchLoader(data, batch_size, ctx.device, train=False, img_size=ctx.cfg.data.img_size, rank=rank, world=world)


def check_images(ctx: EvalContext, data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """A balanced sample of `attack.check_n` of the attacked images (the same on every rank)."""
    n = min(ctx.cfg.evaluate.attack.check_n, len(data))
    batch = next(iter(_loader(ctx, data.subset(n, ctx.cfg.data.subset_seed), n, sharded=False)))
    return batch.x, batch.y


def large_eps(norm: str, x: torch.Tensor) -> float:
    return LARGE_EPS_LINF if norm == "Linf" else LARGE_EPS_LINF * math.sqrt(x[0].numel())


# --- self-checks -----------------------------------------------------------------------------


def model_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gradient: str, randomized_ok: bool = False) -> dict:
    """Eval mode, determinism, logits (not probabilities) and non-zero input gradients on (x, y)."""
    model_in_eval_mode(model)
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError("attack inputs must be [0,1] pixels (normalisation belongs inside the model)")
    with torch.no_grad():
        first, second = model(x), model(x)
    sums = first.float().sum(-1)
    if first.min() >= 0 and first.max() <= 1 and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise InputError("the model outputs probabilities (rows in [0,1] summing to 1), not logits: attacks and "
                         "AutoAttack's losses need logits, so remove the final softmax")
    diff = (first - second).abs().max().item()
    scale = first.abs().max().item()
    deterministic = diff <= 1e-5 * max(scale, 1.0)
    checks = {
        "eval_mode": _check(True, "every module is in eval mode"),
        "deterministic": _check(deterministic or randomized_ok,
                                "two forwards give identical logits" if deterministic else
                                f"two forwards differ by up to {diff:.3g}: a randomized model; "
                                + ("version=rand averages gradients (EOT)" if randomized_ok
                                   else "use attack.version=rand and report it")),
        "logits": _check(True, "outputs are logits, not probabilities"),
    }
    with attack_gradients(model, gradient) as mode:
        x_in = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x_in).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    hint = (" (the model has a straight-through module but gradient=exact was forced)"
            if mode == "exact" and resolve_gradient(model, "auto") != "exact" else "")
    checks["input_gradients"] = _check(zero == 0, f"{zero} of {len(x)} images have an all-zero input gradient "
                                                   f"({mode} gradient){hint}" if zero else
                                       f"non-zero input gradient on all {len(x)} images ({mode} gradient)")
    return checks


def large_eps_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, a: AttackConfig) -> dict:
    """PGD at a budget that allows reaching a constant grey image: accuracy must collapse."""
    eps = large_eps(a.norm, x)
    steps = max(a.steps, 10)
    with _seeded(a.seed, -1, x.device), attack_gradients(model, a.gradient):
        x_adv = pgd_attack(model, x, y, eps=eps, norm=a.norm, steps=steps)
    with torch.no_grad():
        top1 = (model(x_adv).argmax(-1) == y).float().mean().item()
    return _check(top1 <= LARGE_EPS_MAX_TOP1, f"PGD-{steps} at {a.norm} eps={eps:.4g} leaves top-1 {100 * top1:.1f}% "
                                                f"on {len(x)} images (expected <= {100 * LARGE_EPS_MAX_TOP1:.0f}%"
                                                f"{'' if top1 <= LARGE_EPS_MAX_TOP1 else ': gradient masking?'})")


def square_after(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor, a: AttackConfig,
                 eps: float, whitebox: str) -> dict:
    """Short Square run on the check images the white-box attack left robust: it should break none."""
    keep = robust.to(x.device)
    if not keep.any():
        return _check(True, f"no check image survived {whitebox}: Square has nothing to beat")
    broken = square_check(model, x[keep], y[keep], norm=a.norm, eps=eps, n_queries=a.square_queries, seed=a.seed,
                          verbose=a.verbose)
    k, m = int(broken.sum()), int(keep.sum())
    return _check(k <= SQUARE_TOLERANCE * len(x), f"Square ({a.square_queries} queries, black-box) broke {k} of {m} "
                                                   f"images that {whitebox} left robust"
                                                   + (": the white-box attack is weaker than it should be "
                                                      "(gradient masking?)" if k > SQUARE_TOLERANCE * len(x) else ""))


def robust_le_clean(clean: float, robust: float) -> dict:
    return _check(robust <= clean, f"robust top-1 {100 * robust:.2f}% <= clean {100 * clean:.2f}%" if robust <= clean
                  else f"robust top-1 {100 * robust:.2f}% exceeds clean {100 * clean:.2f}%: the model is not "
                       f"deterministic or the attack is broken")


def in_ball(max_delta: float, eps: float, norm: str) -> dict:
    ok = max_delta <= eps + 1e-5
    return _check(ok, f"largest successful perturbation {norm} {max_delta:.5g} {'<=' if ok else '>'} eps {eps:.5g}")


# --- PGD --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int, chunk: int, device: torch.device) -> Iterator[None]:
    """Random starts that depend on the seed and the batch, not on the rank or on earlier batches."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 1_000_003 + chunk + 1)
        yield


def pgd_outcomes(model: torch.nn.Module, ctx: EvalContext, data: ImageSet, eps: float, examples: int = 0):
    """Per-sample (clean, robust) flags of PGD at `eps` for the whole set (gathered over ranks), and
    the first `examples` (x, x_adv, y, pred_clean, pred_adv) when this rank holds them."""
    a = ctx.cfg.evaluate.attack
    batch_size = attack_batch_size(ctx)
    step_size = a.step_size * eps / a.eps if a.step_size is not None and a.eps > 0 else None
    parts, shown = [], None
    for batch in _loader(ctx, data, batch_size):
        check_eps(eps, a.norm, batch.x)
        with torch.no_grad():
            pred_clean = model(batch.x).argmax(-1)
        x_adv = batch.x
        if eps > 0:
            with _seeded(a.seed, int(batch.index[0]) // batch_size, ctx.device), attack_gradients(model, a.gradient):
                x_adv = pgd_attack(model, batch.x, batch.y, eps=eps, norm=a.norm, steps=a.steps, step_size=step_size,
                                   restarts=a.restarts)
        with torch.no_grad():
            pred_adv = model(x_adv).argmax(-1) if eps > 0 else pred_clean
        clean = pred_clean == batch.y
        parts.append((batch.index, clean.cpu(), (clean & (pred_adv == batch.y)).cpu()))
        if examples and int(batch.index[0]) == 0:
            k = min(examples, len(batch.x))
            shown = (batch.x[:k], x_adv[:k], batch.y[:k], pred_clean[:k], pred_adv[:k])
    local = tuple(torch.cat([p[i] for p in parts]) if parts else torch.empty(0, dtype=torch.long if i == 0 else torch.bool)
                  for i in range(3))
    gathered = all_gather_objects(local)
    index = torch.cat([g[0] for g in gathered])
    order = torch.argsort(index)
    clean = torch.cat([g[1] for g in gathered])[order]
    robust = torch.cat([g[2] for g in gathered])[order]
    return clean, robust, shown


def _draw_examples(ctx: EvalContext, shown, name: str, title: str) -> list[str]:
    if not shown or ctx.out_dir is None or not ctx.dist.main:
        return []
    from vitrobust.figures.adversarial import adversarial_grid

    x, x_adv, y, pred_clean, pred_adv = shown
    path = adversarial_grid(x, x_adv, y, pred_clean, pred_adv, ctx.out_dir / f"{name}_examples.png",
                            classes=ctx.data.classes, title=title)
    return [path.name]


@register_benchmark("pgd", suites=("adversarial",), cost=COST_HOURS, gradients=True)
def pgd(model: torch.nn.Module, ctx: EvalContext) -> dict:
    a = ctx.cfg.evaluate.attack
    data = attack_data(ctx)
    x_chk, y_chk = check_images(ctx, data)
    check_eps(a.eps, a.norm, x_chk)
    gradient = resolve_gradient(model, a.gradient)
    checks = model_checks(model, x_chk, y_chk, a.gradient)
    clean, robust, shown = pgd_outcomes(model, ctx, data, a.eps, examples=a.grid)
    clean_top1, robust_top1 = clean.float().mean().item(), robust.float().mean().item()
    checks["robust_le_clean"] = robust_le_clean(clean_top1, robust_top1)
    checks["large_eps"] = large_eps_check(model, x_chk, y_chk, a)
    if a.square_queries:
        checks["square"] = square_after(model, x_chk, y_chk, robust[: len(x_chk)], a, a.eps, f"PGD-{a.steps}")
    _warn_failed("pgd", checks, ctx)
    figures = _draw_examples(ctx, shown, "pgd", f"PGD-{a.steps} {a.norm} eps={a.eps:.4g}")
    return {"norm": a.norm, "eps": a.eps, "steps": a.steps, "step_size": a.step_size or 2.5 * a.eps / a.steps,
            "restarts": a.restarts, "clean_top1": clean_top1, "robust_top1": robust_top1, "n": len(clean),
            "gradient": gradient, "seed": a.seed, "checks": checks, "figures": figures,
            PER_IMAGE: {"clean_top1": per_image(data, clean), "robust_top1": per_image(data, robust)}}


# --- AutoAttack -----------------------------------------------------------------------------


def run_autoattack_benchmark(model: torch.nn.Module, ctx: EvalContext, data: ImageSet, eps: float,
                             examples: int = 0) -> tuple[AutoAttackResult, tuple | None]:
    """The adapter on this rank's chunks (resumable under ctx.out_dir/progress), gathered."""
    a = ctx.cfg.evaluate.attack
    batch_size = attack_batch_size(ctx)
    spec = AutoAttackSpec(norm=a.norm, eps=eps, version=a.version, attacks=tuple(a.attacks) if a.attacks else None,
                          seed=a.seed, batch_size=batch_size, engine=a.engine)
    shown: list = []

    def keep_examples(index, x, x_adv, records):
        if examples and int(index[0]) == 0:
            k = min(examples, len(x))
            with torch.no_grad():
                pred_clean, pred_adv = model(x[:k]).argmax(-1), model(x_adv[:k]).argmax(-1)
            y = torch.tensor([r["label"] for r in records[:k]], device=x.device)
            shown.append((x[:k], x_adv[:k], y, pred_clean, pred_adv))

    chunks = ((b.index, b.x, b.y) for b in _loader(ctx, data, batch_size))
    progress = ctx.out_dir / "progress" if ctx.out_dir is not None else None
    result = autoattack_chunks(model, chunks, len(data), spec, gradient=a.gradient, progress=progress,
                               rank=ctx.dist.rank, world=ctx.dist.world, verbose=a.verbose, on_chunk=keep_examples,
                               checkpoint_seconds=ctx.cfg.evaluate.checkpoint_seconds)
    return result, (shown[0] if shown else None)


def _square_ran(spec: AutoAttackSpec) -> bool:
    return "square" in spec.attack_list


@register_benchmark("autoattack", suites=("adversarial", "quick", "imagenet"), cost=COST_HOURS, gradients=True)
def autoattack(model: torch.nn.Module, ctx: EvalContext) -> dict:
    a = ctx.cfg.evaluate.attack
    data = attack_data(ctx)
    x_chk, y_chk = check_images(ctx, data)
    check_eps(a.eps, a.norm, x_chk)
    checks = model_checks(model, x_chk, y_chk, a.gradient, randomized_ok=a.version == "rand")
    result, shown = run_autoattack_benchmark(model, ctx, data, a.eps, examples=a.grid)
    spec = result.spec
    checks["robust_le_clean"] = robust_le_clean(result.clean_top1, result.robust_top1)
    checks["in_ball"] = in_ball(result.max_delta(), a.eps, a.norm)
    if _square_ran(spec) and spec.version != "rand":
        k = sum(1 for r in result.samples.values() if r["attack"] == "square")
        before = spec.attack_list[: spec.attack_list.index("square")]
        checks["square"] = _check(k <= SQUARE_TOLERANCE * result.n,
                                  f"Square (black-box) broke {k} of {result.n} images that {', '.join(before) or 'no attack'} "
                                  f"left robust" + ("" if k <= SQUARE_TOLERANCE * result.n else
                                                    ": the white-box attacks may be masked"))
    elif a.square_queries:
        robust = result.flags("robust")[: len(x_chk)]
        checks["square"] = square_after(model, x_chk, y_chk, robust, a, a.eps, ", ".join(spec.attack_list))
    checks["large_eps"] = large_eps_check(model, x_chk, y_chk, a)
    checks["authors_checks"] = _check(not result.messages, "; ".join(result.messages) if result.messages
                                      else "AutoAttack's own checks raised no flag")
    _warn_failed("autoattack", checks, ctx)
    figures = _draw_examples(ctx, shown, "autoattack", f"AutoAttack ({spec.version}) {a.norm} eps={a.eps:.4g}")
    out = {"norm": a.norm, "eps": a.eps, "version": spec.version, "attacks": spec.attack_list, "engine": spec.engine,
           "clean_top1": result.clean_top1, "robust_top1": result.robust_top1}
    after = result.robust_after()
    if after is not None:
        out["robust_after"] = after
    out.update({"n": result.n, "gradient": result.gradient, "seed": a.seed, "batch_size": spec.batch_size,
                "resumed_chunks": len(result.resumed), "checks": checks, "figures": figures})
    out[PER_IMAGE] = {"clean_top1": per_image(data, result.flags("clean")),
                      "robust_top1": per_image(data, result.flags("robust"))}
    return out


# --- black-box Square -------------------------------------------------------------------------

@register_benchmark("square", suites=("blackbox",), cost=COST_HOURS)
def square(model: torch.nn.Module, ctx: EvalContext) -> dict:
    """The authors' Square attack alone (black-box, attack.blackbox_queries, the threat model's norm and eps) on the
    attack images: forward only, so it also measures an exported file on its runtime (an upper bound on its
    robust accuracy; the white-box attacks of the PyTorch model give the tighter one)."""
    a = ctx.cfg.evaluate.attack
    data = attack_data(ctx)
    clean, robust = [], []
    for batch in _loader(ctx, data, attack_batch_size(ctx), sharded=False):
        with torch.no_grad():
            right = model(batch.x).argmax(1) == batch.y
        fooled = square_check(model, batch.x[right], batch.y[right], norm=a.norm, eps=a.eps,
                              n_queries=a.blackbox_queries, seed=a.seed)
        held = right.clone().cpu()
        held[right.cpu()] = ~fooled
        clean.append(right.cpu())
        robust.append(held)
    clean_flags, robust_flags = torch.cat(clean), torch.cat(robust)
    return {"norm": a.norm, "eps": a.eps, "queries": a.blackbox_queries, "seed": a.seed,
            "clean_top1": clean_flags.float().mean().item(), "robust_top1": robust_flags.float().mean().item(),
            "n": len(clean_flags), **({"runtime": model.runtime} if getattr(model, "runtime", None) else {}),
            PER_IMAGE: {"clean_top1": per_image(data, clean_flags), "robust_top1": per_image(data, robust_flags)}}


# --- eps sweep -------------------------------------------------------------------------------


def sweep_eps(a: AttackConfig) -> list[float]:
    eps_list = a.eps_list if a.eps_list is not None else [0.0, a.eps / 4, a.eps / 2, a.eps, 2 * a.eps]
    if not eps_list:
        raise InputError("attack.eps_list is empty: give eps values, e.g. [0, 0.01, 0.03]")
    return sorted({float(e) for e in eps_list})


@register_benchmark("eps_sweep", suites=("adversarial", "quick"), cost=COST_HOURS, gradients=True)
def eps_sweep(model: torch.nn.Module, ctx: EvalContext) -> dict:
    a = ctx.cfg.evaluate.attack
    data = attack_data(ctx)
    x_chk, y_chk = check_images(ctx, data)
    eps_list = sweep_eps(a)
    for eps in eps_list:
        check_eps(eps, a.norm, x_chk)
    gradient = resolve_gradient(model, a.gradient)
    checks = model_checks(model, x_chk, y_chk, a.gradient, randomized_ok=a.sweep_attack == "autoattack" and a.version == "rand")
    robust_top1, clean_top1, n, flags = [], None, len(data), {}
    for i, eps in enumerate(eps_list):
        if a.sweep_attack == "pgd":
            clean, robust, _ = pgd_outcomes(model, ctx, data, eps)
        else:
            result, _ = run_autoattack_benchmark(model, ctx, data, eps)
            clean, robust = result.flags("clean"), result.flags("robust")
        clean_top1 = clean.float().mean().item()
        robust_top1.append(robust.float().mean().item())
        flags[f"robust_top1.{i}"] = per_image(data, robust)
    flags["clean_top1"] = per_image(data, clean)
    rises = [(eps_list[i], eps_list[i + 1]) for i in range(len(eps_list) - 1) if robust_top1[i + 1] > robust_top1[i]]
    checks["monotone"] = _check(not rises, "robust top-1 never increases with eps" if not rises else
                                "robust top-1 increases from eps " + ", ".join(f"{e0:.4g} to {e1:.4g}" for e0, e1 in rises)
                                + ": the attack is unreliable at the larger eps")
    above = [e for e, r in zip(eps_list, robust_top1) if r > clean_top1]
    checks["robust_le_clean"] = _check(not above, f"robust top-1 <= clean {100 * clean_top1:.2f}% at every eps" if not above
                                       else f"robust top-1 exceeds clean {100 * clean_top1:.2f}% at eps "
                                            + ", ".join(f"{e:.4g}" for e in above))
    checks["large_eps"] = large_eps_check(model, x_chk, y_chk, a)
    _warn_failed("eps_sweep", checks, ctx)
    out = {"norm": a.norm, "attack": a.sweep_attack, "eps_list": eps_list, "robust_top1": robust_top1,
           "clean_top1": clean_top1, "n": n, "gradient": gradient, "seed": a.seed}
    if a.sweep_attack == "pgd":
        out.update(steps=a.steps, restarts=a.restarts)
    else:
        out.update(version=a.version, attacks=AutoAttackSpec(norm=a.norm, eps=a.eps, version=a.version,
                                                             attacks=tuple(a.attacks) if a.attacks else None).attack_list)
    figures = []
    if ctx.out_dir is not None and ctx.dist.main:
        from vitrobust.figures.adversarial import accuracy_vs_eps

        figures.append(accuracy_vs_eps(out, ctx.out_dir / "eps_sweep.png",
                                       title=f"{a.sweep_attack} ({a.norm}), n={n}").name)
    out.update(checks=checks, figures=figures)
    out[PER_IMAGE] = flags
    return out


__all__ = ["CheckWarning", "autoattack", "eps_sweep", "large_eps_check", "model_checks", "pgd", "pgd_outcomes",
           "run_autoattack_benchmark", "square_after", "sweep_eps"]
