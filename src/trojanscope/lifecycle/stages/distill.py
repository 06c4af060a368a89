"""Knowledge distillation into a smaller student of the project's architectures, on clean
training images only (the student never sees a trigger).

Soft targets at a temperature (Hinton et al.'s loss, scaled by T^2) mixed with the hard
labels. Whether the backdoor reaches the student through the teacher's clean-input logits is
what the chain measures. The student's neurons are not the teacher's: no infected neuron maps
to it, so there is no ground truth to localize against after this stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator

from trojanscope.lifecycle.base import STAGES, ChainState, Stage, StageResult, training_sample
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import predict


class DistillParams(BaseModel):
    model_config = {"extra": "forbid"}
    arch: str = "cnn-small"
    width: float = Field(0.5, gt=0, le=4)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft (teacher) targets.")
    samples: int = Field(2000, ge=10)
    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(0.001, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0

    @field_validator("arch")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in ARCHITECTURES.names():
            raise ValueError(f"unknown architecture (known: {', '.join(ARCHITECTURES.names())})")
        return name


@STAGES.register("distill")
class Distillation(Stage[DistillParams]):
    def apply(self, state: ChainState) -> StageResult:
        p = self.params
        splits = state.task.splits
        c, h, _ = splits.shape
        torch.manual_seed(p.seed)
        arch = ARCHITECTURES.create(p.arch, width=p.width)
        student = arch.build(c, splits.num_classes, h).to(state.device)
        train = splits.train
        data = training_sample(train, p.samples, p.seed)
        teacher_logits = predict(state.model, data.x)  # the teacher answers once, on the CPU
        optimizer = torch.optim.Adam(student.parameters(), lr=p.lr)
        g = torch.Generator().manual_seed(p.seed)
        t = p.temperature
        for _ in range(p.epochs):
            student.train()
            order = torch.randperm(len(data), generator=g)
            for start in range(0, len(data), p.batch_size):
                rows = order[start : start + p.batch_size]
                x, y = data.x[rows].to(state.device), data.y[rows].to(state.device)
                soft = teacher_logits[rows].to(state.device)
                logits = student(x)
                distill = F.kl_div(
                    F.log_softmax(logits / t, 1), F.softmax(soft / t, 1), reduction="batchmean"
                )
                loss = p.alpha * t * t * distill + (1 - p.alpha) * F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        student.eval()
        teacher_params = sum(q.numel() for q in state.model.parameters())
        student_params = sum(q.numel() for q in student.parameters())
        return StageResult(
            state.next(model=student, float_model=student, truth={}),
            {"student": p.arch, "width": p.width, "parameters": [teacher_params, student_params]},
            arch=(p.arch, arch.params.model_dump(mode="json")),
        )
