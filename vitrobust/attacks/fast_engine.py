"""The `fast` AutoAttack engine (ATTACK_ENGINES "fast"): the attacks and budgets of the authors' version,
run with less work.

For versions standard, plus and custom it runs the version's attacks in the authors' order, each on
the points still robust, with the authors' settings read from their own `AutoAttack` object (iterations,
restarts, target classes, queries, seeds). It is free only where the verdict cannot change:

- APGD-CE, APGD-DLR, APGD-T (vitrobust.attacks.apgd) and FAB-T (vitrobust.attacks.fab_targeted) are
  ours, and a point leaves as soon as it is broken. APGD runs its restarts and target classes one after
  the other, as the authors do, with the random starts their code draws for the same seed; FAB-T,
  deterministic, runs its target classes as rows of one batch. FAB (untargeted, version plus) and
  Square are the authors' classes, run on the remaining points;
- APGD's passes run in fp32 by default (the authors' trajectories, so their verdicts) and may run in
  bf16/fp16 (`precision`, else env VITROBUST_AA_PRECISION: fp32, auto, bf16, fp16; auto times fp32
  against bf16 (CPU, CUDA) or fp16 (MPS, CUDA without bf16) once per model and keeps the faster): faster,
  but other trajectories, so some verdicts differ as with another seed (measured, docs/architecture.md).
  A success counts only once the model misclassifies that image in fp32 (a refused row keeps being
  attacked). FAB-T and Square stay in fp32: both decide on small logit
  differences near the boundary, which bf16 blurs, and in bf16 both broke fewer points (measured,
  docs/architecture.md);
- our passes run under vitrobust.attacks.kernels (the same mathematics with cheaper kernels);
- the clean logits are computed once and give both the clean verdict and the target classes.

Version rand (EOT for randomized defences) delegates to the authors' engine unchanged.
See docs/architecture.md, "AutoAttack engines".
"""

from __future__ import annotations

import functools
import logging
import os
import time
import weakref

import torch
from pyautoattack import checks

from vitrobust.attacks import autoattack as aa_mod
from vitrobust.attacks.apgd import Forward, apgd
from vitrobust.attacks.autoattack import AutoAttackSpec, build_autoattack
from vitrobust.attacks.fab_targeted import fab_targeted
from vitrobust.attacks.straight_through import straight_through
from vitrobust.errors import InputError
from vitrobust.registry import ATTACK_ENGINES

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ROW_ELEMENTS = 2**25  # a FAB-T batch holds at most this many pixel values per state tensor (or one block of points)
ROW_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t")  # ours, as rows; fab (untargeted) and square are the authors'
SPEEDUP_NEEDED = 1.2  # auto: reduced precision must be this much faster than fp32
_chosen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(device, shape): precision}


# --- precision --------------------------------------------------------------------------------


def timed_pass(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, repeats: int = 3,
               grad: bool = True) -> float:
    """Best seconds of one of the engine's passes on x (`Forward` in `dtype`): forward and backward (input
    gradient), or forward only without `grad`; after one warm-up pass."""
    fwd, best = Forward(model, dtype), float("inf")
    for r in range(repeats + 1):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        xr = x.detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = fwd(xr)
            if grad:
                torch.autograd.grad(out.logsumexp(1).sum(), xr)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if r:
            best = min(best, time.perf_counter() - t0)
    return best


def choose_precision(model: torch.nn.Module, x: torch.Tensor, setting: str | None = None) -> str:
    """fp32, bf16 or fp16 for APGD's passes: `setting`, else env VITROBUST_AA_PRECISION, else fp32; auto is
    the faster on a probe batch of 32 images like x (cached per model)."""
    setting = setting or os.environ.get("VITROBUST_AA_PRECISION") or "fp32"
    if setting != "auto":
        if setting not in PRECISIONS:
            raise InputError(f"AutoAttack precision must be auto, fp32, bf16 or fp16, got {setting!r}")
        return setting
    cache = _chosen.setdefault(model, {})
    key = (str(x.device), tuple(x.shape[1:]))
    if key not in cache:
        device = x.device.type
        low = "fp16" if device == "mps" or (device == "cuda" and not torch.cuda.is_bf16_supported()) else "bf16"
        probe = x[:32].repeat(-(-32 // len(x)), *[1] * (x.dim() - 1))[:32]
        try:
            fast = timed_pass(model, probe, PRECISIONS[low]) * SPEEDUP_NEEDED < timed_pass(model, probe, None)
        except (RuntimeError, TypeError):  # autocast not supported for this model/device
            fast = False
        cache[key] = low if fast else "fp32"
    return cache[key]


# --- the attacks ------------------------------------------------------------------------------


def _target_blocks(clean_logits: torch.Tensor, n_targets: int, n_restarts: int) -> list[torch.Tensor]:
    """The authors' target classes: the 2nd, 3rd, ... largest clean logit, each with every restart."""
    order = clean_logits.sort(dim=1)[1]
    return [order[:, -c] for c in range(2, n_targets + 2) for _ in range(n_restarts)]


def _run_rows(attack: str, fwd: Forward, aa, x, y, clean_logits, spec: AutoAttackSpec) -> tuple:
    """APGD-CE, APGD-DLR, APGD-T or FAB-T on points x as blocks of rows (a restart, or a target class and a
    restart, for every point left), APGD's one block per batch, FAB-T's as many as ROW_ELEMENTS allows;
    points broken leave."""
    n = len(x)
    if attack == "apgd-t":
        runner = aa.apgd_targeted
        blocks = _target_blocks(clean_logits, runner.n_target_classes, runner.n_restarts)
    elif attack == "fab-t":
        blocks = _target_blocks(clean_logits, aa.fab.n_target_classes, 1)  # the authors run FAB-T with 1 restart
    else:
        runner = aa.apgd
        blocks = [None] * runner.n_restarts
    # FAB-T is deterministic, so its blocks may share a batch. APGD's blocks run one at a time, in the
    # authors' order, each drawing its random start for the points left from one generator seeded like
    # theirs: the same starts as the authors' code with the same seed (docs/architecture.md)
    per_batch = max(1, ROW_ELEMENTS // max(n * x[0].numel(), 1)) if attack == "fab-t" else 1
    gen = torch.Generator().manual_seed(spec.seed)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_found = x.clone()
    warn = functools.partial(checks.check_zero_gradients, logger=logging.getLogger("auto-attack"))
    for start in range(0, len(blocks), per_batch):
        left = (~found).nonzero().flatten()
        if not len(left):
            break
        group = blocks[start:start + per_batch]
        rows = left.repeat(len(group))
        target = torch.cat([t[left] for t in group]) if group[0] is not None else None
        owner = torch.arange(len(left), device=x.device).repeat(len(group))
        if attack == "fab-t":
            hit, x_hit = fab_targeted(fwd, x[rows], y[rows], target, eps=spec.eps, norm=spec.norm,
                                      n_iter=aa.fab.n_iter, owner=owner, n_points=len(left))
        else:
            loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[attack]
            hit, x_hit = apgd(fwd, x[rows], y[rows], eps=spec.eps, norm=spec.norm, n_iter=runner.n_iter, loss=loss,
                              target=target, owner=owner, n_points=len(left), rho=runner.thr_decr, generator=gen,
                              on_start_grad=warn if loss != "ce" else None)
        found[left[hit]] = True
        x_found[left[hit]] = x_hit[hit]
    return found, x_found


def _authors_attack(attack: str, aa, x, y) -> torch.Tensor:
    """FAB (untargeted) or Square through the authors' object `aa`, as their run_standard_evaluation calls it."""
    if attack == "fab":
        aa.fab.targeted = False
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x, y)
    aa.square.seed = aa.get_seed()
    return aa.square.perturb(x, y)


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, spec: AutoAttackSpec) -> torch.Tensor:
    return aa_mod._delta_norm(x_adv - x, spec.norm).to(x.device) <= spec.eps + aa_mod.BALL_TOL


def _run_authors(attack: str, exact: Forward, aa, x, y, spec: AutoAttackSpec) -> tuple:
    """The authors' FAB or Square on points x, in fp32; a point counts as broken when the model misclassifies
    the image returned, within the ball."""
    adv = _authors_attack(attack, aa, x, y)
    found = (exact.exact(adv).argmax(1) != y) & _in_ball(adv, x, spec)
    return found, torch.where(found.view(-1, *[1] * (x.dim() - 1)), adv, x)


# --- the engine -------------------------------------------------------------------------------


@functools.partial(ATTACK_ENGINES.add, "fast")
def fast_attack_chunk(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AutoAttackSpec, *,
                      gradient: str = "exact", verbose: bool = False,
                      precision: str | None = None) -> tuple[list[dict], torch.Tensor, list[str]]:
    """The `fast` engine: same arguments and results as the `authors` engine (see the module docstring)."""
    if spec.version == "rand":
        return aa_mod.attack_chunk(model, x, y, spec, gradient=gradient, verbose=verbose)
    if len(x) > spec.batch_size:
        raise InputError(f"a chunk has {len(x)} images, more than batch_size={spec.batch_size}")
    device = x.device
    with torch.no_grad():
        clean_logits = model(x).float()
    n_classes = clean_logits.shape[-1]
    clean = (clean_logits.argmax(-1) == y).cpu()
    robust = clean.clone()
    attack_of: list[str | None] = [None] * len(x)
    x_adv = x.detach().clone()
    aa_mod._check_classes(spec, n_classes)
    if spec.eps == 0 or not robust.any():
        return aa_mod._records(y, clean, robust, attack_of, x, x_adv, spec), x_adv, []
    logger = logging.getLogger("auto-attack")
    with aa_mod._own_rng(device), aa_mod._authors_output(verbose) as log, \
            straight_through(model, enabled=gradient == "straight-through"):
        aa = build_autoattack(model, spec, device, n_classes, verbose=verbose)
        bs = spec.batch_size
        checks.check_randomized(aa.get_logits, x[:bs], y[:bs], bs=bs, logger=logger)
        checks.check_range_output(aa.get_logits, x[:bs], logger=logger)
        checks.check_dynamic(model, x[:bs], False, logger=logger)
        checks.check_n_classes(n_classes, spec.attack_list, aa.apgd_targeted.n_target_classes,
                               aa.fab.n_target_classes, logger=logger)
        name = choose_precision(model, x, precision)
        fwd, exact = Forward(model, PRECISIONS[name]), Forward(model)  # APGD's passes; FAB-T's and the checks
        after = {"clean": clean.float().mean().item()}
        t0 = time.perf_counter()
        for attack in spec.attack_list:
            idx = robust.nonzero().flatten()
            if not len(idx):
                break
            on = idx.to(device)
            xs, ys = x[on], y[on]
            if attack in ROW_ATTACKS:
                found, adv = _run_rows(attack, exact if attack == "fab-t" else fwd, aa, xs, ys, clean_logits[on], spec)
            else:
                found, adv = _run_authors(attack, exact, aa, xs, ys, spec)
            broken = found.cpu()
            robust[idx[broken]] = False
            x_adv[on[found]] = adv[found]
            for i in idx[broken].tolist():
                attack_of[i] = attack
            after[attack] = robust.float().mean().item()
            logger.debug(f"{attack}: {int(broken.sum())} of {len(idx)} broken, robust accuracy {after[attack]:.2%} "
                         f"(APGD's passes in {name}, total time {time.perf_counter() - t0:.1f} s)")
        checks.check_square_sr(after, logger=logger)
        if fwd.rejected:
            logger.debug(f"fp32 refused {fwd.rejected} reduced-precision successes of APGD")
    broken = ~robust & clean
    if float(x_adv.min()) < 0 or float(x_adv.max()) > 1 or not _in_ball(x_adv[broken], x[broken.to(device)], spec).all():
        raise RuntimeError("the fast AutoAttack engine left the eps-ball or [0,1]; this is a bug, please report it")
    return aa_mod._records(y, clean, robust, attack_of, x, x_adv, spec), x_adv, log.messages


__all__ = ["choose_precision", "fast_attack_chunk", "timed_pass"]
