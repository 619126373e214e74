"""distill: train a smaller student network to imitate the trained teacher (knowledge distillation).

Loss (Hinton et al. 2015): `alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`,
with the KL from `F.kl_div(..., reduction="batchmean")` (the default "mean" divides by the number of
classes too and silently shrinks the soft term tenfold). The T^2 keeps the soft gradients on the
scale of the hard ones as T grows.

Outputs are treated as logits. Some nets (convnet) end in log_softmax; that is safe: log_softmax(z)
= z - logsumexp(z) differs from z by one constant per row, that constant divided by T is still one
constant per row, and softmax ignores per-row constants, so softmax(log_softmax(z) / T) equals
softmax(z / T) for every T (the tests check it). No un-normalising is needed.

The row's figures put the student's accuracy next to the same student trained the same way (same
initial weights, batches, epochs and learning rate) without the teacher, so the teacher's
contribution is visible; the harness's speedup is then the student against the teacher on eager.
Both trainings are cached; `train_s` is the distillation's own training time (the run that cached it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.train import batches, default_config, evaluate
from techniques import Context, NotApplicable, Transform, register
from techniques._derived import fit_cached, state_digest

QUICK_EPOCHS = 5


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * batchmean KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(student, target)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    hard = F.cross_entropy(student_logits, target)
    return alpha * soft + (1 - alpha) * hard


@register
@dataclass(frozen=True)
class Distill(Transform):
    """Replace the model by a student of another registered architecture, distilled from it."""

    student: str = "convnet"
    temperature: float = 4.0
    alpha: float = 0.5            # weight of the distillation term; 1 - alpha weighs the labels
    epochs: int | None = None     # None: the student's default recipe (QUICK_EPOCHS with --quick)

    name = "distill"
    figures = {"student_accuracy": "ratio", "student_alone_accuracy": "ratio", "teacher_accuracy": "ratio",
               "train_s": "s"}
    examples = ("distill",)

    def __post_init__(self) -> None:
        if self.student not in models.list():
            raise ValueError(f"distill.student must be a registered model ({', '.join(models.list())}); "
                             f"got {self.student!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"distill.temperature must be a number > 0 (typically 2-8); got {self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"distill.alpha must be between 0 and 1 (0: labels only, 1: teacher only); "
                             f"got {self.alpha!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"distill.epochs must be an integer >= 1 or none; got {self.epochs!r}")

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        s_shape = models.spec(self.student).input_shape
        if tuple(s_shape) != tuple(ctx.input_shape):
            raise NotApplicable(f"student {self.student} takes {tuple(s_shape)} inputs but {ctx.model_name} "
                                f"takes {tuple(ctx.input_shape)}; pick a student with the teacher's input shape")
        if not ctx.data.labelled:
            raise NotApplicable(f"data {ctx.data.name} has random labels: accuracy, and so distillation, means nothing")
        teacher = model.eval()
        with torch.no_grad():  # the teacher is frozen and the data fixed: its logits are computed once
            teacher_logits = torch.cat([teacher(ctx.data.train_x[i:i + 512]) for i in range(0, len(ctx.data.train_x), 512)])
        cfg = default_config(self.student)
        epochs = self.epochs or (min(QUICK_EPOCHS, cfg.epochs) if ctx.quick else cfg.epochs)
        recipe = f"{self.student}|epochs={epochs}|bs={cfg.batch_size}|lr={cfg.lr}|wd={cfg.weight_decay}|seed={ctx.seed}|{ctx.data.name}"

        alone, _ = fit_cached(f"distill-alone|{recipe}", self._fresh_student(ctx.seed),
                              lambda m: fit(m, ctx.data, None, epochs, cfg, ctx.seed, self.temperature, 0.0))
        student, train_s = fit_cached(
            f"distill|{recipe}|teacher={ctx.model_name}:{state_digest(teacher)}|T={self.temperature}|alpha={self.alpha}",
            self._fresh_student(ctx.seed),
            lambda m: fit(m, ctx.data, teacher_logits, epochs, cfg, ctx.seed, self.temperature, self.alpha))
        acc = lambda m: evaluate(m, ctx.data.test_x, ctx.data.test_y)  # noqa: E731
        return student.eval(), {"student_accuracy": acc(student), "student_alone_accuracy": acc(alone),
                                "teacher_accuracy": acc(teacher), "train_s": train_s}

    def _fresh_student(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)  # the same initial weights for the distilled and the alone student
        return models.create(self.student)


def fit(student: nn.Module, data, teacher_logits: torch.Tensor | None, epochs: int, cfg, seed: int,
        temperature: float, alpha: float) -> float:
    """Adam + cosine decay over the same shuffled batches as bench.train.train; with teacher_logits
    None (or alpha 0) this is plain cross-entropy training. Returns the seconds it took."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        student.train()
        for idx in batches(len(data.train_x), cfg.batch_size, epoch, seed):
            opt.zero_grad(set_to_none=True)
            out = student(data.train_x[idx])
            if teacher_logits is None or alpha == 0:
                loss = F.cross_entropy(out, data.train_y[idx])
            else:
                loss = distillation_loss(out, teacher_logits[idx], data.train_y[idx], temperature, alpha)
            loss.backward()
            opt.step()
        sched.step()
    student.eval()
    return time.perf_counter() - t0
