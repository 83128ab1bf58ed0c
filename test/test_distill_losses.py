"""Full-stage distillation's building blocks (issue 19): the decoder's output tokens, the losses,
hard mask weighting, label-free and hard prompts, and a few optimiser steps of a tiny student
toward the shipped demo model where every loss term falls (the CI smoke; training is not run
in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="distillation needs torch")

from segfast_ros.bench.scenes import frame  # noqa: E402
from segfast_ros.distill.losses import (  # noqa: E402
    DistillWeights,
    decode_stages,
    embedding_loss,
    full_stage_loss,
    hard_mask_weights,
    logit_loss,
    token_loss,
)
from segfast_ros.distill.prompts import (  # noqa: E402
    PromptSets,
    grid_points,
    hard_points,
    initial_prompts,
)
from segfast_ros.export.onnx_weights import sam_from_onnx  # noqa: E402
from segfast_ros.modeling.registry import build_sam  # noqa: E402
from segfast_ros.runtime.transforms import prepare_image  # noqa: E402
from segfast_ros.spec import LABEL_BG, LABEL_FG  # noqa: E402

STEPS, LR = 8, 2e-3
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def teacher():
    sam = sam_from_onnx("demo_tinyvit", DEMO)
    sam.requires_grad_(False)
    return sam


@pytest.fixture(scope="module")
def images(teacher) -> torch.Tensor:
    """Two generated scenes as encoder input (the scenes' ground truth is not used)."""
    return torch.cat(
        [
            torch.from_numpy(prepare_image(frame((256, 256), seed), teacher.info)[0])
            for seed in (3, 4)
        ]
    )


def test_forward_with_tokens_is_forward_plus_the_output_tokens(teacher, images) -> None:
    emb = teacher.encode(images[:1])
    pe = teacher.prompt_encoder
    coords = torch.tensor([[[60.0, 80.0], [0.0, 0.0]], [[30.0, 40.0], [200.0, 220.0]]])
    labels = torch.tensor([[1.0, -1.0], [2.0, 3.0]])
    sparse = pe.embed_points(coords, labels)
    dense = pe.embed_mask(torch.zeros(1, 1, 64, 64), torch.zeros(1))
    with torch.no_grad():
        masks, iou = teacher.mask_decoder(emb, pe.get_dense_pe(), sparse, dense)
        masks2, iou2, tokens = teacher.mask_decoder.forward_with_tokens(
            emb, pe.get_dense_pe(), sparse, dense
        )
    assert torch.equal(masks, masks2) and torch.equal(iou, iou2)
    m = teacher.mask_decoder.num_mask_tokens
    assert tokens.shape == (2, 1 + m + 2, 64)  # IoU token, mask tokens, one per prompt token
    # decode_stages is the same decoder call, prompt encoding included.
    stages = decode_stages(teacher, emb, coords, labels)
    assert torch.equal(stages.logits, masks) and torch.equal(stages.tokens, tokens)


@pytest.mark.parametrize(
    ("loss", "shape"),
    [(embedding_loss, (2, 64, 16, 16)), (token_loss, (3, 9, 64)), (logit_loss, (3, 4, 64, 64))],
)
def test_each_loss_is_zero_for_equal_inputs_and_grows_with_the_gap(loss, shape) -> None:
    teacher = torch.randn(shape, generator=_gen(1)) * 3
    noise = torch.randn(shape, generator=_gen(2))
    assert float(loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-7)
    values = [float(loss(teacher + s * noise, teacher)) for s in (0.1, 0.5, 2.0)]
    assert 0 < values[0] < values[1] < values[2], values


def test_the_teacher_is_a_target_only() -> None:
    student = torch.randn(2, 64, 64, requires_grad=True)
    teacher = torch.randn(2, 64, 64, requires_grad=True)
    logit_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_logit_loss_weights_scale_each_mask() -> None:
    teacher = torch.randn(2, 32, 32, generator=_gen(3)) * 4
    student = teacher.clone()
    student[1] = -teacher[1]  # mask 1 is wrong, mask 0 right
    plain = float(logit_loss(student, teacher))
    up = float(logit_loss(student, teacher, torch.tensor([0.0, 2.0])))
    assert up == pytest.approx(2 * plain, rel=1e-5)
    assert float(logit_loss(student, teacher, torch.tensor([2.0, 0.0]))) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one per mask"):
        logit_loss(student, teacher, torch.ones(3))


def test_hard_mask_weights_rank_a_worse_mask_higher_with_mean_one() -> None:
    teacher = torch.full((3, 32, 32), -5.0)
    teacher[:, 8:24, 8:24] = 5.0
    student = teacher.clone()
    student[1, 8:24, 8:16] = -5.0  # half of the object lost: IoU 0.5
    student[2] = -teacher[2]  # all wrong: IoU 0
    w = hard_mask_weights(student, teacher)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[0]) < float(w[1]) < float(w[2])
    assert not w.requires_grad
    sharp = hard_mask_weights(student, teacher, power=2.0)
    assert float(sharp[2] / sharp[1]) > float(w[2] / w[1])
    assert torch.allclose(hard_mask_weights(student, teacher, power=0.0), torch.ones(3))
    equal = hard_mask_weights(teacher, teacher)  # no gap anywhere: the floor, all 1
    assert torch.allclose(equal, torch.ones(3))


def test_mismatched_shapes_and_bad_weights_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"image embeddings differ.*\(1, 64, 16, 16\).*neck"):
        embedding_loss(torch.zeros(1, 64, 16, 16), torch.zeros(1, 256, 64, 64))
    with pytest.raises(ValueError, match="output tokens differ"):
        token_loss(torch.zeros(2, 7, 64), torch.zeros(2, 7, 32))
    with pytest.raises(ValueError, match="DistillWeights.tokens must be a finite number >= 0"):
        DistillWeights(tokens=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        DistillWeights(0, 0, 0)


def _disagreeing_logits() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = torch.full((3, 64, 64), -4.0)
    teacher[:, 16:48, 16:48] = 4.0
    student = teacher.clone()
    student[0, 16:48, 16:24] = -4.0  # student misses a strip: fg points there
    student[1, 2:10, 50:60] = 4.0  # student adds a blob: bg points there
    return student, teacher  # mask 2: they agree


def test_hard_points_land_where_the_masks_disagree_with_the_teachers_labels() -> None:
    student, teacher = _disagreeing_logits()
    points, labels = hard_points(student, teacher, _gen(5), k=6)
    assert points.shape == (3, 6, 2) and labels.shape == (3, 6)
    px = points.long()  # logits frame: image_size None
    on_teacher = teacher[torch.arange(3)[:, None], px[..., 1], px[..., 0]] > 0
    on_student = student[torch.arange(3)[:, None], px[..., 1], px[..., 0]] > 0
    assert (on_teacher[:2] != on_student[:2]).all()  # only in the disagreement region
    assert ((px[0, :, 0] >= 16) & (px[0, :, 0] < 24)).all()
    assert (labels == torch.where(on_teacher, float(LABEL_FG), float(LABEL_BG))).all()
    assert (labels[0] == LABEL_FG).all() and (labels[1] == LABEL_BG).all()
    # Mask 2 agrees: confirming points from the teacher mask's interior, labelled fg.
    assert ((px[2] >= 17) & (px[2] < 47)).all() and (labels[2] == LABEL_FG).all()
    assert len(set(map(tuple, px[0].tolist()))) == 6  # distinct pixels


def test_hard_points_are_seeded_and_scale_to_input_pixels() -> None:
    student, teacher = _disagreeing_logits()
    a = hard_points(student, teacher, _gen(9), k=2, image_size=256)
    b = hard_points(student, teacher, _gen(9), k=2, image_size=256)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ((a[0][0, :, 0] >= 64) & (a[0][0, :, 0] < 96)).all()  # strip 16..24 at 4 px a pixel
    with pytest.raises(ValueError, match="differ in shape"):
        hard_points(student, teacher[:, :32, :32], _gen(), k=1)


def test_initial_prompts_from_a_grid_and_from_teacher_masks() -> None:
    pts = grid_points(16, 256, _gen(1), valid_hw=(128, 256))
    assert ((pts[:, 0] < 256) & (pts[:, 1] < 128) & (pts >= 0).all(dim=1)).all()
    cells = {(int(x // 64), int(y // 32)) for x, y in pts.tolist()}
    assert len(cells) == 16  # stratified: one point per cell
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 5:30] = True
    masks[2, 40:60, 40:44] = True  # mask 1 is empty: never drawn
    p = initial_prompts(40, 256, _gen(2), teacher_masks=masks, box_rate=0.5)
    assert p.coords.shape == (40, 2, 2) and p.labels.shape == (40, 2)
    boxes = p.labels[:, 0] == 2
    assert 5 < int(boxes.sum()) < 35
    assert {tuple(b) for b in p.coords[boxes].reshape(-1, 4).tolist()} == {
        (20.0, 40.0, 120.0, 80.0),
        (160.0, 160.0, 176.0, 240.0),
    }
    px = (p.coords[~boxes, 0] / 4).long()
    assert masks[:, px[:, 1], px[:, 0]].any(dim=0).all()  # each point inside a teacher mask
    blank = initial_prompts(4, 256, _gen(2), teacher_masks=torch.zeros(2, 64, 64, dtype=bool))
    assert (blank.labels == torch.tensor([1.0, -1.0])).all()  # nothing seen: the grid
    more = p.with_points(torch.zeros(40, 1, 2), torch.ones(40, 1))
    assert more.coords.shape == (40, 3, 2) and torch.equal(more.coords[:, 1:], p.coords)
    assert isinstance(more, PromptSets)


@pytest.fixture
def one_thread():
    """The smoke runs on one thread: its ops are small (threads only add sync overhead, badly
    so on a busy 2-core machine) and the trajectory it asserts on is then the same anywhere."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_student_distils_and_every_loss_term_falls(teacher, images, tmp_path) -> None:
    torch.manual_seed(0)
    student = build_sam("tinyvit_s256").train()
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict(), strict=True)
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict(), strict=True)
    gen = _gen(7)
    with torch.no_grad():  # label-free prompts: the teacher's masks of a grid, then from them
        t_emb = teacher.encode(images)
        grid = initial_prompts(8, 256, gen)
        coords = grid.coords.repeat(2, 1, 1)
        seen = decode_stages(teacher, t_emb, coords, grid.labels.repeat(2, 1)).logits[:, 0] > 0
        prompts = [
            initial_prompts(4, 256, gen, teacher_masks=seen[i * 8 : (i + 1) * 8]) for i in (0, 1)
        ]
        coords = torch.cat([p.coords for p in prompts])
        labels = torch.cat([p.labels for p in prompts])
        target = decode_stages(teacher, t_emb, coords, labels)
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    history = []
    for _ in range(STEPS):
        out = decode_stages(student, student.encode(images), coords, labels)
        total, stats = full_stage_loss(out, target, DistillWeights(1.0, 1.0, 1.0))
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(stats)
    first, last = history[0], history[-1]
    for term in ("embedding", "tokens", "logits", "total"):
        assert last[term] < 0.8 * first[term], (term, history)
    assert last["miou"] > first["miou"] + 0.1, history  # and the masks agree more
    # The student is written in the official layout: it loads back with strict key checking.
    path = tmp_path / "student.pt"
    torch.save(student.state_dict(), path)
    reloaded = build_sam("tinyvit_s256", path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(reloaded.state_dict().values(), student.state_dict().values(), strict=True)
    )
