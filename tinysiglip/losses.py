"""Distillation losses: feature imitation, affinity mimicking and the contrastive task loss.

All functions take embeddings already projected to the teacher's width. Conventions that matter for
reading λ values:

* ``feature_loss`` L2-normalises student and teacher embeddings first (CLIP-KD found normalised
  feature distillation works best) and sums the squared error over the embedding dimension, so the
  term is ``||ŝ - t̂||² = 2 - 2·cos(s, t)`` per sample, in [0, 4] whatever the width. The image and
  text terms are averaged, so λ_feat = 1 weighs it like one order-1 loss.
* ``affinity_loss`` is KL(p_teacher ‖ p_student) of the in-batch softmax similarity distributions,
  image→text and text→image, averaged over rows and the two directions (image-image and text-text
  affinities are not used). The teacher's distribution uses the teacher's own logit scale from the
  cache; the student's uses the student's learnable scale (TinyCLIP). The bias cancels in a softmax.
* ``sigmoid_loss`` is the SigLIP loss: ``-Σ log σ(z_ij · (scale·cos_ij + bias)) / B`` with
  ``z = +1`` for positives and ``-1`` otherwise.
* ``infonce_loss`` is the symmetric CLIP cross-entropy; several positives in a row share the target.

A batch normally holds one caption per image (positives on the diagonal). When a batch can hold two
captions of one image, pass ``image_index`` / ``caption_image_index`` so every pair showing the same
image counts as a positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DistillationLoss",
    "LossWeights",
    "affinity_loss",
    "feature_loss",
    "infonce_loss",
    "positive_mask",
    "sigmoid_loss",
]


def positive_mask(
    image_index: torch.Tensor | None,
    caption_image_index: torch.Tensor | None,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (B_img, B_txt) matrix of pairs that show the same image (the diagonal by default)."""
    if image_index is None or caption_image_index is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    return image_index.reshape(-1, 1) == caption_image_index.reshape(1, -1)


def sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP pairwise sigmoid loss on L2-normalised embeddings; ``logit_scale`` is already exp()'d."""
    logits = logit_scale * image_embeds @ text_embeds.T + logit_bias
    if positives is None:
        positives = torch.eye(logits.shape[0], logits.shape[1], dtype=torch.bool, device=logits.device)
    signs = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / image_embeds.shape[0]


def infonce_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised embeddings; a row with k positives spreads its target 1/k."""
    logits = logit_scale * image_embeds @ text_embeds.T
    if positives is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    soft = positives.to(logits.dtype)
    image_to_text = soft / soft.sum(dim=1, keepdim=True)
    text_to_image = soft.T / soft.T.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, image_to_text) + F.cross_entropy(logits.T, text_to_image)) / 2


def feature_loss(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
) -> torch.Tensor:
    """Mean squared distance of normalised student and teacher embeddings, images and texts averaged."""

    def one_side(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)
        return diff.pow(2).sum(dim=-1).mean()

    return (one_side(student_image, teacher_image) + one_side(student_text, teacher_text)) / 2


def affinity_loss(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    student_logit_scale: torch.Tensor,
    teacher_logit_scale: float | torch.Tensor,
) -> torch.Tensor:
    """KL(teacher ‖ student) of in-batch similarity softmaxes, image→text and text→image."""
    student_logits = (
        student_logit_scale * F.normalize(student_image, dim=-1) @ F.normalize(student_text, dim=-1).T
    )
    teacher_logits = (
        teacher_logit_scale * F.normalize(teacher_image, dim=-1) @ F.normalize(teacher_text, dim=-1).T
    )
    teacher_logits = teacher_logits.to(student_logits.dtype)

    def kl_rows(student_rows: torch.Tensor, teacher_rows: torch.Tensor) -> torch.Tensor:
        return F.kl_div(
            F.log_softmax(student_rows, dim=-1),
            F.log_softmax(teacher_rows, dim=-1),
            log_target=True,
            reduction="batchmean",
        )

    return (kl_rows(student_logits, teacher_logits) + kl_rows(student_logits.T, teacher_logits.T)) / 2


@dataclass(frozen=True)
class LossWeights:
    """λ for each term; a zero switches the term off and skips its computation."""

    feat: float = 1.0
    affinity: float = 1.0
    contrast: float = 1.0

    def __post_init__(self) -> None:
        for name in ("feat", "affinity", "contrast"):
            value = getattr(self, name)
            if not (value >= 0.0) or value == float("inf"):
                raise ValueError(f"loss weight lambda_{name} must be a finite number >= 0, got {value!r}")
        if self.feat == 0 and self.affinity == 0 and self.contrast == 0:
            raise ValueError("all loss weights are 0: switch on at least one of feat, affinity, contrast")


class DistillationLoss(torch.nn.Module):
    """λ_feat·MSE + λ_aff·KL(affinity) + λ_con·contrastive, returned as a dict of weighted terms.

    The trainer sums every key ending in ``_loss``; adding a term needs no other wiring.
    """

    def __init__(self, weights: LossWeights | Mapping[str, float], contrastive: str = "sigmoid") -> None:
        super().__init__()
        self.weights = weights if isinstance(weights, LossWeights) else LossWeights(**weights)
        if contrastive not in ("sigmoid", "infonce"):
            raise ValueError(f"contrastive must be 'sigmoid' or 'infonce', got {contrastive!r}")
        self.contrastive = contrastive

    def forward(
        self,
        *,
        student_image: torch.Tensor,
        student_text: torch.Tensor,
        teacher_image: torch.Tensor,
        teacher_text: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        teacher_logit_scale: float | torch.Tensor,
        image_index: torch.Tensor | None = None,
        caption_image_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        w = self.weights
        if w.feat > 0:
            terms["feat_loss"] = w.feat * feature_loss(
                student_image, student_text, teacher_image, teacher_text
            )
        if w.affinity > 0:
            terms["affinity_loss"] = w.affinity * affinity_loss(
                student_image, student_text, teacher_image, teacher_text, logit_scale, teacher_logit_scale
            )
        if w.contrast > 0:
            positives = None
            if image_index is not None and caption_image_index is not None:
                positives = positive_mask(
                    image_index, caption_image_index, student_image.shape[0], student_image.device
                )
            image = F.normalize(student_image, dim=-1)
            text = F.normalize(student_text, dim=-1)
            if self.contrastive == "sigmoid":
                term = sigmoid_loss(image, text, logit_scale, logit_bias, positives=positives)
            else:
                term = infonce_loss(image, text, logit_scale, positives=positives)
            terms["contrast_loss"] = w.contrast * term
        return terms
