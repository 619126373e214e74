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

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from bench import api
from bench.api.harness import (TrainConfig, default_config, evaluate, fit_cached, model_code_digest, state_digest,
                               train)
from techniques import NEEDS_LABELS, Context, NotApplicable, Transform, register

QUICK_EPOCHS = 5
DEFAULT_STUDENT = "convnet"   # for a teacher that declares no student (the 1x28x28 reference nets)


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
    """Knowledge distillation (Hinton et al. 2015): a smaller registered student trained on the model's soft logits."""

    student: str | None = None    # None: the teacher's registered student (`student=` at registration), else convnet
    temperature: float = 4.0
    alpha: float = 0.5            # weight of the distillation term; 1 - alpha weighs the labels
    epochs: int | None = None     # None: the student's default recipe (QUICK_EPOCHS with --quick)

    name = "distill"
    figures = {"student_accuracy": "ratio", "student_alone_accuracy": "ratio", "teacher_accuracy": "ratio",
               "train_s": "s", "student_params": "count", "teacher_params": "count"}
    examples = ("distill",)

    def __post_init__(self) -> None:
        if self.student is not None and self.student not in api.MODELS.names():
            raise ValueError(f"distill.student must be a registered model ({', '.join(api.MODELS.names())}); "
                             f"got {self.student!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"distill.temperature must be a number > 0 (typically 2-8); got {self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"distill.alpha must be between 0 and 1 (0: labels only, 1: teacher only); "
                             f"got {self.alpha!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"distill.epochs must be an integer >= 1 or none; got {self.epochs!r}")

    def trains(self) -> bool:
        return True   # the student is trained on the teacher's logits

    def student_for(self, teacher: str) -> str:
        """The student's registered name: the `student` parameter, else the teacher's declared one, else convnet."""
        declared = api.model_spec(teacher).student if teacher in api.MODELS.names() else None
        return self.student or declared or DEFAULT_STUDENT

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        student_name = self.student_for(ctx.model_name)
        if student_name == ctx.model_name:
            raise NotApplicable(f"{ctx.model_name} would be its own student; name a smaller one (distill:student=...)")
        # A fully convolutional student takes any input size; one with a fixed flatten does not. Running
        # it on the teacher's own images is the test that holds for both.
        try:
            with torch.inference_mode():
                classes = self._fresh_student(student_name, ctx.seed).eval()(ctx.data.test_x[:2]).shape[-1]
        except Exception as exc:
            raise NotApplicable(f"student {student_name} cannot take {ctx.model_name}'s {tuple(ctx.input_shape)} inputs "
                                f"({type(exc).__name__}); pick a student with the teacher's input shape") from None
        if classes != ctx.data.num_classes:
            raise NotApplicable(f"student {student_name} outputs {classes} classes but the data has "
                                f"{ctx.data.num_classes}; pick a student with the teacher's classes")
        if not ctx.data.labelled:
            raise NotApplicable(f"distillation {NEEDS_LABELS}")
        teacher = model.eval()
        with torch.no_grad():  # the teacher is frozen and the data fixed: its logits are computed once
            teacher_logits = torch.cat([teacher(ctx.data.train_x[i:i + 512]) for i in range(0, len(ctx.data.train_x), 512)])
        cfg = default_config(student_name)
        epochs = self.epochs or (min(QUICK_EPOCHS, cfg.epochs) if ctx.quick else cfg.epochs)
        cfg = replace(cfg, epochs=epochs, seed=ctx.seed)
        recipe = f"{student_name}|epochs={epochs}|bs={cfg.batch_size}|lr={cfg.lr}|wd={cfg.weight_decay}|seed={ctx.seed}|{ctx.data.identity}" \
                 f"|code={model_code_digest(student_name, self._fresh_student(student_name, ctx.seed))}"

        alone, _ = fit_cached(f"distill-alone|{recipe}", self._fresh_student(student_name, ctx.seed),
                              lambda m: fit(m, ctx.data, None, cfg, self.temperature, 0.0))
        student, train_s = fit_cached(
            f"distill|{recipe}|teacher={ctx.model_name}:{state_digest(teacher)}|T={self.temperature}|alpha={self.alpha}",
            self._fresh_student(student_name, ctx.seed),
            lambda m: fit(m, ctx.data, teacher_logits, cfg, self.temperature, self.alpha))
        acc = lambda m: evaluate(m, ctx.data.test_x, ctx.data.test_y)  # noqa: E731
        return student.eval(), {"student_accuracy": acc(student), "student_alone_accuracy": acc(alone),
                                "teacher_accuracy": acc(teacher), "train_s": train_s,
                                "student_params": sum(p.numel() for p in student.parameters()),
                                "teacher_params": sum(p.numel() for p in teacher.parameters())}

    @staticmethod
    def _fresh_student(name: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)  # the same initial weights for the distilled and the alone student
        return api.create_model(name)


def fit(student: nn.Module, data, teacher_logits: torch.Tensor | None, cfg: TrainConfig, temperature: float,
        alpha: float) -> None:
    """Train `student` with the shared loop (same Adam + cosine schedule and batches as every other
    training here) and the distillation loss as its step; with teacher_logits None (or alpha 0) this
    is plain cross-entropy training."""
    if teacher_logits is None or alpha == 0:
        train(student, data, cfg, eval_every_epoch=False)
        return
    labels = data.train_y
    # The step sees (x, y) of each batch; the teacher's logits are looked up by image, so the loop is
    # given each training image's index in place of its label, and the step maps it back.
    by_index = replace(data, train_y=torch.arange(len(labels)))

    def step(model: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> None:
        distillation_loss(model(x), teacher_logits[idx], labels[idx], temperature, alpha).backward()

    train(student, by_index, cfg, step=step, eval_every_epoch=False)
