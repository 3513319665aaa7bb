"""APGD (Croce & Hein, ICML 2020), our own implementation for the `fast` AutoAttack engine.

Same algorithm, hyper-parameters and losses as the authors' `APGDAttack` / `APGDAttack_targeted`
(pyautoattack): a random start on the eps-sphere (Linf: scaled uniform noise, L2: scaled Gaussian),
first step 2*eps, momentum 0.75 (none on the first step), checkpoints after 22% of the iterations,
then every 3% less, down to 6%: at a checkpoint a run halves its step size and jumps back to its
best point when the loss went up in at most rho=0.75 of the steps since the last checkpoint, or when
its best loss did not improve since a checkpoint that did not halve. Losses: cross-entropy, DLR and
targeted DLR. What differs is only what cannot change whether a point is broken:

- rows: every row is an independent run (a point with a restart or a target class), so the
  restarts and targets of a point run side by side in one batch instead of one after another;
- a row leaves the batch as soon as its point is broken, by itself or by another row of its point
  (the authors keep iterating on fooled points);
- the model pass may run in reduced precision (`Forward`): a success counts only once the fp32
  model misclassifies that very image; a rejected row keeps being attacked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitrobust.attacks.kernels import attack_kernels

RHO = 0.75  # the authors' threshold for halving the step size
MOMENTUM = 0.75
GUARD = 0.05  # reduced precision: rows whose top-2 logit gap is below GUARD * max|logit| get an fp32 check too
EXACT_GUARD = 1e-4  # the same in fp32, for the rounding of the attack kernels (vitrobust.attacks.kernels)


class Forward:
    """The model calls of the fast engine: attack passes in `dtype` (None: fp32) and exact fp32 checks.

    The attack passes run under `attack_kernels` (same mathematics, other rounding); `fooled(x, y, logits)`
    says which rows the model itself misclassifies in fp32, re-running it on the rows that the attack
    pass finds wrong or nearly so (top-2 gap below GUARD, or EXACT_GUARD in fp32, times max |logit|).
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None = None):
        self.model, self.dtype = model, dtype
        self.rechecked = 0  # rows re-run in fp32
        self.rejected = 0  # reduced-precision successes that fp32 refused

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with attack_kernels(self.model, x, reduced=self.dtype is not None), \
                torch.autocast(x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model(x).float()

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self.model(x).float()

    def fooled(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, near: bool = True) -> torch.Tensor:
        """Rows that fp32 misclassifies, among those the pass finds wrong or (with `near`) nearly wrong."""
        wrong = logits.argmax(1) != y
        check = wrong
        if near:
            top2 = logits.topk(2, dim=1).values
            guard = GUARD if self.dtype is not None else EXACT_GUARD
            check = wrong | (top2[:, 0] - top2[:, 1] < guard * logits.abs().amax(1))
        out = torch.zeros_like(wrong)
        if check.any():
            rows = check.nonzero().flatten()
            out[rows] = self.exact(x[rows]).argmax(1) != y[rows]
            self.rechecked += len(rows)
            self.rejected += int((wrong & ~out).sum())
        return out


# --- losses (per row; larger is better for the attacker) ---------------------------------------


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """-(z_y - max_{i != y} z_i) / (z_(1) - z_(3)), z_(k) the k-th largest logit."""
    ordered, order = logits.sort(dim=1)
    rows = torch.arange(len(y), device=y.device)
    y_on_top = order[:, -1] == y
    best_other = torch.where(y_on_top, ordered[:, -2], ordered[:, -1])
    return -(logits[rows, y] - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)."""
    ordered = logits.sort(dim=1).values
    rows = torch.arange(len(y), device=y.device)
    return -(logits[rows, y] - logits[rows, target]) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


LOSSES: dict[str, Callable] = {"ce": ce_loss, "dlr": dlr_loss, "dlr-targeted": targeted_dlr_loss}


# --- geometry ---------------------------------------------------------------------------------


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.pow(2).sum(1).sqrt()


def _unit(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d / (_per_row(_norm(d, norm), d) + 1e-12)


def _project(z: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Into the eps-ball around x0, then into [0,1] (which only shrinks a perturbation)."""
    if norm == "Linf":
        z = torch.minimum(torch.maximum(z, x0 - eps), x0 + eps)
    else:
        d = z - x0
        z = x0 + _unit(d, norm) * _per_row(_norm(d, norm), d).clamp(max=eps)
    return z.clamp(0.0, 1.0)


def random_start(x0: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A point on the eps-sphere around each row (then clipped to [0,1]), noise drawn on the CPU."""
    if norm == "Linf":
        noise = 2 * torch.rand(x0.shape, generator=generator) - 1
    else:
        noise = torch.randn(x0.shape, generator=generator)
    return (x0 + eps * _unit(noise.to(x0.device, x0.dtype), norm)).clamp(0.0, 1.0)


def _value_and_grad(fwd: Forward, loss: Callable, xa: torch.Tensor, y, target):
    xa = xa.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = fwd(xa)
        value = loss(logits, y, target)
        (grad,) = torch.autograd.grad(value.sum(), xa)
    return logits.detach(), value.detach(), grad.detach()


# --- the attack -------------------------------------------------------------------------------


def apgd(fwd: Forward, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, n_iter: int = 100,
         loss: str = "ce", target: torch.Tensor | None = None, owner: torch.Tensor | None = None,
         n_points: int | None = None, rho: float = RHO, generator: torch.Generator | None = None,
         on_start_grad: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD on rows `x` (labels `y`, targets `target` for dlr-targeted); row r attacks point owner[r].

    Returns (found, x_found): per point (n_points of them), whether some row broke it, and the first
    adversarial image found for it (fp32-checked; zeros where not found).
    """
    owner = torch.arange(len(x), device=x.device) if owner is None else owner
    n_points = len(x) if n_points is None else n_points
    generator = generator or torch.Generator().manual_seed(0)
    loss_fn = LOSSES[loss]
    found = torch.zeros(n_points, dtype=torch.bool, device=x.device)
    x_found = torch.zeros((n_points, *x.shape[1:]), dtype=x.dtype, device=x.device)
    # checkpoints: the first after 22% of the iterations, then each 3% sooner, at least 6% apart
    period, shrink, shortest = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)

    s: dict[str, torch.Tensor] = {"x0": x, "y": y, "owner": owner}
    if target is not None:
        s["target"] = target
    s["xa"] = random_start(x, eps, norm, generator)
    logits, value, s["grad"] = _value_and_grad(fwd, loss_fn, s["xa"], y, target)
    if on_start_grad is not None:
        on_start_grad(s["grad"])
    s.update(x_prev=s["xa"], best_x=s["xa"], best_grad=s["grad"], best_loss=value, last_best=value,
             reduced=torch.ones_like(y, dtype=torch.bool), step=torch.full((len(x),), 2.0 * eps, device=x.device))
    history = torch.zeros(n_iter, len(x), device=x.device)  # loss per iteration and row

    def settle(logits: torch.Tensor) -> bool:
        """Record the rows the fp32 model misclassifies, drop every row of a broken point; False: none left."""
        nonlocal history
        hit = fwd.fooled(s["xa"], s["y"], logits)
        if hit.any():
            found[s["owner"][hit]] = True
            x_found[s["owner"][hit]] = s["xa"][hit]
        keep = ~found[s["owner"]]
        if not keep.all():
            for name, t in s.items():
                s[name] = t[keep]
            history = history[:, keep]
        return bool(keep.any())

    alive = settle(logits)
    since, period_now = 0, period
    for i in range(n_iter):
        if not alive:
            break
        with torch.no_grad():
            xa, x0, a = s["xa"], s["x0"], MOMENTUM if i > 0 else 1.0
            step = _per_row(s["step"], xa)
            direction = torch.sign(s["grad"]) if norm == "Linf" else _unit(s["grad"], norm)
            z = _project(xa + step * direction, x0, eps, norm)
            z = _project(xa + (z - xa) * a + (xa - s["x_prev"]) * (1 - a), x0, eps, norm)
            s["x_prev"], s["xa"] = xa, z
        logits, s["value"], s["grad"] = _value_and_grad(fwd, loss_fn, s["xa"], s["y"], s.get("target"))
        if not settle(logits):
            break
        value = s["value"]
        better = value > s["best_loss"]
        rb = _per_row(better, s["xa"])
        s["best_x"] = torch.where(rb, s["xa"], s["best_x"])
        s["best_grad"] = torch.where(rb, s["grad"], s["best_grad"])
        s["best_loss"] = torch.where(better, value, s["best_loss"])
        history[i] = value
        since += 1
        if since == period_now:  # checkpoint (the window reaches back one step; before step 0 it reads 0)
            window = history[torch.arange(i - period_now, i + 1, device=history.device) % n_iter]
            oscillating = (window[1:] > window[:-1]).sum(0) <= period_now * rho
            stalled = ~s["reduced"] & (s["last_best"] >= s["best_loss"])
            halve = oscillating | stalled
            s["reduced"], s["last_best"] = halve, s["best_loss"].clone()
            s["step"] = torch.where(halve, s["step"] / 2, s["step"])
            rh = _per_row(halve, s["xa"])
            s["xa"] = torch.where(rh, s["best_x"], s["xa"])
            s["grad"] = torch.where(rh, s["best_grad"], s["grad"])
            period_now, since = max(period_now - shrink, shortest), 0
    return found, x_found
