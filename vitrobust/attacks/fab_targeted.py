"""Targeted FAB (Croce & Hein, ICML 2020) for the `fast` AutoAttack engine, as AutoAttack runs it (FAB-T).

The algorithm and settings are those of the authors' `FABAttack_PT` with `targeted=True` and one restart
(no random start, so FAB-T is deterministic): 100 iterations, each linearising the decision boundary
between the label y and the target t at the current point x1 (f = z_t - z_y and its gradient), projecting
both x1 and the clean image x0 onto that hyperplane within [0,1] (the authors' own projection functions,
pyautoattack.fab_projections), and moving to a mix of the two projections, overshot by eta=1.05, with at
most alpha_max=0.1 weight on the clean image's; when the new point is adversarial it is pulled back
towards x0 by beta=0.9. A point counts as broken when some iterate is adversarial within eps, which is
what the authors' minimum-norm bookkeeping and final check decide. What differs:

- the target classes of a point run as rows of one batch, and a point leaves once it is broken;
- the pass that checks an iterate also gives the next linearisation (the authors run a forward pass to
  check and another with the gradient at the same point) for rows that were not pulled back at the
  previous iteration; rows that were, and will likely be again, get a forward pass to check and then a
  pass with the gradient at the point where they end up, as the authors do;
- the passes run under vitrobust.attacks.kernels through `Forward`, whose precision also decides whether
  an iterate is adversarial for the algorithm's moves; a point counts as broken only once the model
  misclassifies the image in fp32. The fast engine keeps FAB-T in fp32: in bf16 it broke 27 points where
  fp32 broke 41 (of 158, Linf 0.06, the quickstart's adversarially trained model).
"""

from __future__ import annotations

import torch
from pyautoattack.fab_projections import projection_l2, projection_linf

from vitrobust.attacks.apgd import Forward, _norm, _per_row

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9


def _linearise(fwd: Forward, x1: torch.Tensor, y, target, grad: bool):
    """Logits at x1, f = z_t - z_y and (with `grad`) its gradient."""
    rows = torch.arange(len(y), device=y.device)
    if not grad:
        with torch.no_grad():
            logits = fwd(x1)
        return logits, None, None
    x1 = x1.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = fwd(x1)
        f = logits[rows, target] - logits[rows, y]
        (g,) = torch.autograd.grad(f.sum(), x1)
    return logits.detach(), f.detach(), g.detach()


def _passes(fwd: Forward, x1: torch.Tensor, y, target, grad: torch.Tensor):
    """Logits at x1 for every row, and f and its gradient for the rows in the mask `grad` (zeros elsewhere)."""
    logits, f, g = None, torch.zeros(len(y), device=x1.device), torch.zeros_like(x1)
    for mask, with_grad in ((grad, True), (~grad, False)):
        rows = mask.nonzero().flatten()
        if len(rows):
            part, f_rows, g_rows = _linearise(fwd, x1[rows], y[rows], target[rows], grad=with_grad)
            logits = part.new_empty((len(y), part.shape[1])) if logits is None else logits
            logits[rows] = part
            if with_grad:
                f[rows], g[rows] = f_rows, g_rows
    return logits, f, g


def fab_targeted(fwd: Forward, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *, eps: float, norm: str,
                 n_iter: int = 100, owner: torch.Tensor | None = None,
                 n_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB-T on rows `x` (label y, target class `target`); row r attacks point owner[r].

    Returns (found, x_found) per point: broken or not, and the first adversarial image within eps found.
    """
    project = projection_linf if norm == "Linf" else projection_l2
    owner = torch.arange(len(x), device=x.device) if owner is None else owner
    n_points = len(x) if n_points is None else n_points
    found = torch.zeros(n_points, dtype=torch.bool, device=x.device)
    x_found = torch.zeros((n_points, *x.shape[1:]), dtype=x.dtype, device=x.device)
    s = {"x0": x, "y": y, "target": target, "owner": owner, "x1": x.clone(),
         "back": torch.zeros(len(x), dtype=torch.bool, device=x.device)}
    _, s["f"], s["g"] = _linearise(fwd, x, y, target, grad=True)
    for i in range(n_iter):
        last = i == n_iter - 1
        with torch.no_grad():
            x0, x1, n = s["x0"], s["x1"], len(s["y"])
            w = s["g"].flatten(1)
            b = -s["f"] + (w * x1.flatten(1)).sum(1)
            d = project(torch.cat((x1.flatten(1), x0.flatten(1))), torch.cat((w, w)), torch.cat((b, b)))
            size = _norm(d, norm).clamp(min=1e-8)
            alpha = _per_row((size[:n] / (size[:n] + size[n:])).clamp(0.0, ALPHA_MAX), x1)
            x1 = ((x1 + ETA * d[:n].view_as(x1)) * (1 - alpha) + (x0 + ETA * d[n:].view_as(x1)) * alpha).clamp(0.0, 1.0)
        # a row pulled back last time will likely be again, and then needs its gradient at another point:
        # it gets a forward pass here, the others a pass with the gradient, which serves the next step
        direct = ~s["back"] & (not last)
        logits, f, g = _passes(fwd, x1, s["y"], s["target"], direct)
        adversarial = logits.argmax(1) != s["y"]  # what the attack sees, in its passes' precision
        inside = adversarial & (_norm(x1 - x0, norm) <= eps)
        if inside.any():  # a success counts once fp32 agrees; a refused row goes on from x1
            rows = inside.nonzero().flatten()
            rows = rows[fwd.fooled(x1[rows], s["y"][rows], logits[rows], near=False)]
            found[s["owner"][rows]] = True
            x_found[s["owner"][rows]] = x1[rows]
        back = adversarial & ~inside  # adversarial but too far: pull back towards the clean image
        x1 = torch.where(_per_row(back, x1), x0 + (x1 - x0) * BETA, x1)
        fresh = direct & ~back  # rows whose pass gave the gradient at their next point
        s.update(x1=x1, back=back, f=torch.where(fresh, f, s["f"]), g=torch.where(_per_row(fresh, g), g, s["g"]),
                 fresh=fresh)
        keep = ~found[s["owner"]]
        if not keep.all():
            s = {name: t[keep] for name, t in s.items()}
        if not len(s["y"]):
            break
        if not last and not s["fresh"].all():
            rows = (~s["fresh"]).nonzero().flatten()
            _, s["f"][rows], s["g"][rows] = _linearise(fwd, s["x1"][rows], s["y"][rows], s["target"][rows], grad=True)
    return found, x_found
