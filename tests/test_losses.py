"""Each loss and its gradient against a naive float64 implementation written with loops."""

from __future__ import annotations

import math

import pytest
import torch

from tinysiglip.losses import (
    DistillationLoss,
    LossWeights,
    affinity_loss,
    feature_loss,
    infonce_loss,
    sigmoid_loss,
)


def _unit(rows: list[list[float]]) -> list[list[float]]:
    out = []
    for row in rows:
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v / norm for v in row])
    return out


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def naive_sigmoid(img, txt, scale, bias, positives):
    total = 0.0
    for i, a in enumerate(img):
        for j, b in enumerate(txt):
            z = 1.0 if positives[i][j] else -1.0
            logit = scale * _dot(a, b) + bias
            total += math.log1p(math.exp(-z * logit))
    return total / len(img)


def naive_infonce(img, txt, scale, positives):
    def direction(rows, cols, pos):
        loss = 0.0
        for i, a in enumerate(rows):
            logits = [scale * _dot(a, b) for b in cols]
            log_norm = math.log(sum(math.exp(v) for v in logits))
            targets = [1.0 if pos(i, j) else 0.0 for j in range(len(cols))]
            mass = sum(targets)
            loss += -sum(t / mass * (logit - log_norm) for t, logit in zip(targets, logits))
        return loss / len(rows)

    return (
        direction(img, txt, lambda i, j: positives[i][j]) + direction(txt, img, lambda i, j: positives[j][i])
    ) / 2


def naive_feature(si, st, ti, tt):
    def side(s, t):
        s, t = _unit(s), _unit(t)
        return sum(sum((a - b) ** 2 for a, b in zip(x, y)) for x, y in zip(s, t)) / len(s)

    return (side(si, ti) + side(st, tt)) / 2


def naive_affinity(si, st, ti, tt, s_scale, t_scale):
    si, st, ti, tt = _unit(si), _unit(st), _unit(ti), _unit(tt)

    def softmax(values):
        m = max(values)
        exps = [math.exp(v - m) for v in values]
        z = sum(exps)
        return [e / z for e in exps]

    def kl(rows_s, cols_s, rows_t, cols_t):
        total = 0.0
        for i in range(len(rows_s)):
            p_t = softmax([t_scale * _dot(rows_t[i], c) for c in cols_t])
            p_s = softmax([s_scale * _dot(rows_s[i], c) for c in cols_s])
            total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        return total / len(rows_s)

    return (kl(si, st, ti, tt) + kl(st, si, tt, ti)) / 2


def _numeric_grad(fn, tensor: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of ``fn(rows)`` (a naive float64 loss of nested lists) at ``tensor``."""
    point = tensor.detach().clone()
    grad = torch.zeros_like(point)
    flat = point.view(-1)
    for k in range(flat.numel()):
        old = flat[k].item()
        flat[k] = old + eps
        up = fn(point.tolist())
        flat[k] = old - eps
        down = fn(point.tolist())
        flat[k] = old
        grad.view(-1)[k] = (up - down) / (2 * eps)
    return grad


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    b, d = 5, 7
    return {
        "si": torch.randn(b, d, generator=gen, dtype=torch.float64),
        "st": torch.randn(b, d, generator=gen, dtype=torch.float64),
        "ti": torch.randn(b, d, generator=gen, dtype=torch.float64),
        "tt": torch.randn(b, d, generator=gen, dtype=torch.float64),
    }


@pytest.mark.parametrize("multi_positive", [False, True])
def test_sigmoid_loss_and_gradient_match_naive(batch, multi_positive):
    img = torch.nn.functional.normalize(batch["si"], dim=-1)
    txt = torch.nn.functional.normalize(batch["st"], dim=-1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    owners = torch.tensor([0, 1, 1, 2, 3]) if multi_positive else torch.arange(5)
    positives = owners[:, None] == owners[None, :] if multi_positive else None
    pos_list = (positives if positives is not None else torch.eye(5, dtype=torch.bool)).tolist()

    ours = sigmoid_loss(img, txt, scale, bias, positives=positives)
    reference = naive_sigmoid(img.tolist(), txt.tolist(), 10.0, -10.0, pos_list)
    assert ours.item() == pytest.approx(reference, rel=1e-10)

    leaf = img.clone().requires_grad_(True)
    sigmoid_loss(leaf, txt, scale, bias, positives=positives).backward()
    numeric = _numeric_grad(lambda rows: naive_sigmoid(rows, txt.tolist(), 10.0, -10.0, pos_list), leaf)
    torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("multi_positive", [False, True])
def test_infonce_loss_and_gradient_match_naive(batch, multi_positive):
    img = torch.nn.functional.normalize(batch["si"], dim=-1)
    txt = torch.nn.functional.normalize(batch["st"], dim=-1)
    scale = torch.tensor(7.0, dtype=torch.float64)
    owners = torch.tensor([0, 0, 1, 2, 2]) if multi_positive else torch.arange(5)
    positives = owners[:, None] == owners[None, :] if multi_positive else None
    pos_list = (positives if positives is not None else torch.eye(5, dtype=torch.bool)).tolist()

    ours = infonce_loss(img, txt, scale, positives=positives)
    assert ours.item() == pytest.approx(naive_infonce(img.tolist(), txt.tolist(), 7.0, pos_list), rel=1e-10)

    leaf = txt.clone().requires_grad_(True)
    infonce_loss(img, leaf, scale, positives=positives).backward()
    numeric = _numeric_grad(lambda rows: naive_infonce(img.tolist(), rows, 7.0, pos_list), leaf)
    torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-7)


def test_feature_loss_and_gradient_match_naive(batch):
    si, st, ti, tt = batch["si"], batch["st"], batch["ti"], batch["tt"]
    ours = feature_loss(si, st, ti, tt)
    assert ours.item() == pytest.approx(
        naive_feature(si.tolist(), st.tolist(), ti.tolist(), tt.tolist()), rel=1e-10
    )

    leaf = si.clone().requires_grad_(True)
    feature_loss(leaf, st, ti, tt).backward()
    numeric = _numeric_grad(
        lambda rows: naive_feature(rows, st.tolist(), ti.tolist(), tt.tolist()), leaf.detach().clone()
    )
    torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-7)


def test_feature_loss_is_zero_for_parallel_embeddings(batch):
    assert feature_loss(batch["ti"] * 3, batch["tt"] * 0.5, batch["ti"], batch["tt"]).item() == pytest.approx(
        0, abs=1e-12
    )


def test_affinity_loss_and_gradient_match_naive(batch):
    si, st, ti, tt = batch["si"], batch["st"], batch["ti"], batch["tt"]
    s_scale = torch.tensor(4.0, dtype=torch.float64)
    ours = affinity_loss(si, st, ti, tt, s_scale, 12.0)
    reference = naive_affinity(si.tolist(), st.tolist(), ti.tolist(), tt.tolist(), 4.0, 12.0)
    assert ours.item() == pytest.approx(reference, rel=1e-10)

    leaf = st.clone().requires_grad_(True)
    affinity_loss(si, leaf, ti, tt, s_scale, 12.0).backward()
    numeric = _numeric_grad(
        lambda rows: naive_affinity(si.tolist(), rows, ti.tolist(), tt.tolist(), 4.0, 12.0),
        leaf.detach().clone(),
    )
    torch.testing.assert_close(leaf.grad, numeric, rtol=1e-5, atol=1e-7)


def test_affinity_loss_is_zero_when_student_equals_teacher(batch):
    value = affinity_loss(
        batch["ti"], batch["tt"], batch["ti"], batch["tt"], torch.tensor(9.0, dtype=torch.float64), 9.0
    )
    assert value.item() == pytest.approx(0, abs=1e-12)


def test_distillation_loss_skips_switched_off_terms(batch, monkeypatch):
    calls = []
    import tinysiglip.losses as losses

    real_feature = losses.feature_loss
    monkeypatch.setattr(losses, "feature_loss", lambda *a: calls.append("feat") or real_feature(*a))
    kwargs = dict(
        student_image=batch["si"],
        student_text=batch["st"],
        teacher_image=batch["ti"],
        teacher_text=batch["tt"],
        logit_scale=torch.tensor(10.0, dtype=torch.float64),
        logit_bias=torch.tensor(-10.0, dtype=torch.float64),
        teacher_logit_scale=10.0,
    )
    terms = DistillationLoss(LossWeights(feat=0, affinity=0, contrast=1))(**kwargs)
    assert set(terms) == {"contrast_loss"} and calls == []
    terms = DistillationLoss({"feat": 2.0, "affinity": 0.5, "contrast": 1.0})(**kwargs)
    assert set(terms) == {"feat_loss", "affinity_loss", "contrast_loss"}
    assert terms["feat_loss"].item() == pytest.approx(
        2.0 * feature_loss(batch["si"], batch["st"], batch["ti"], batch["tt"]).item()
    )


@pytest.mark.parametrize(
    "weights", [{"feat": -1.0}, {"feat": 0, "affinity": 0, "contrast": 0}, {"contrast": float("nan")}]
)
def test_invalid_weights_are_refused(weights):
    with pytest.raises(ValueError, match="lambda|weights"):
        LossWeights(**weights)
