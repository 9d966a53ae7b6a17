"""Teachers and distillation objectives: row alignment per method (student i <-> teacher j on the same
visible tokens, visible-token gathering, all tokens for G2SD), the teacher outside the optimizer and
the state dict, the EMA update, foreign teachers read from local files, start-up errors, smoke runs
through the CLI on image and video, and an exact resume of an EMA-distilled run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mae_zoo.api import load
from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Visible
from mae_zoo.distill.base import whiten
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.teachers import EMATeacher, HFTeacher, TimmTeacher
from mae_zoo.train import train
from tests.conftest import FAST, compose_cfg
from tests.test_resume_exact import IMAGE, kill_resume_and_compare

RANDOM = {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75}
BLOCK = {"_target_": "mae_zoo.masks.BlockMask", "ratio": 0.5, "min_block": 2}
SIZES = {"img_size": 16, "in_chans": 1, "patch_size": 4, "optim": {"blr": 1e-3, "weight_decay": 0.05}}
STUDENT = {
    "encoder": {"embed_dim": 32, "depth": 3, "num_heads": 2},
    "decoder": {"embed_dim": 16, "depth": 2, "num_heads": 2},
}
BIG = {
    "encoder": {"embed_dim": 48, "depth": 4, "num_heads": 2},
    "decoder": {"embed_dim": 24, "depth": 4, "num_heads": 2},
}


def save_model(model: ImageMAE, path: Path) -> str:
    """An mae_zoo checkpoint as training writes it (the parts mae_zoo.load reads)."""
    meta = {"class": "mae_zoo.modalities.image.ImageMAE", "layout": model.layout.name}
    torch.save({"mae_zoo": meta, "hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    return str(path)


def student(teacher: dict | None, distill: dict | None, mask: dict = RANDOM, sizes: dict = STUDENT) -> ImageMAE:
    torch.manual_seed(0)
    return ImageMAE(**sizes, **SIZES, mask=mask, teacher=teacher, distill=distill)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(1)
    return save_model(ImageMAE(**BIG, **SIZES, mask=RANDOM), tmp_path_factory.mktemp("teacher") / "t.ckpt")


def checkpoint_teacher(path: str, decoder: bool = False) -> dict:
    return {"_target_": "mae_zoo.teachers.CheckpointTeacher", "path": path, "decoder": decoder}


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("mask", [RANDOM, BLOCK], ids=["exact_count", "variable_count"])
def test_dmae_matches_student_block_i_with_teacher_block_j_on_the_same_visible_tokens(mask, tmp_path):
    """A teacher that is the student's own copy, an identity projection and i == j: every aligned row
    is identical, so the L1 term is exactly zero; block i against block j != i is not. The block
    mask leaves padded rows, which must not count."""
    model = student(None, None, mask)
    path = save_model(model, tmp_path / "self.ckpt")
    for j, zero in ((1, True), (2, False)):
        distill = {"_target_": "mae_zoo.distill.DMAE", "student_block": 1, "teacher_block": j}
        s = student(checkpoint_teacher(path), distill, mask)
        s.configure_model()
        assert s.distill is not None and s.distill.proj is not None
        with torch.no_grad():
            s.distill.proj.weight.copy_(torch.eye(32))
            s.distill.proj.bias.zero_()
        out = s(images(), generator=torch.Generator().manual_seed(0))
        assert (out.extras["loss_distill"].item() < 1e-6) == zero, (j, out.extras)
        torch.testing.assert_close(out.loss, out.extras["loss_recon"] + out.extras["loss_distill"])


def test_mrmae_mimics_the_teacher_on_the_visible_tokens_only(teacher_ckpt):
    distill = {"_target_": "mae_zoo.distill.MRMAE", "teacher_block": -1}
    s = student(checkpoint_teacher(teacher_ckpt), distill)
    x, mask = images(), RANDOM_MASK()
    out = s(x, mask=mask)
    teacher = load(teacher_ckpt)
    full = teacher.forward_intermediates(x, [-1])[0][:, 1:]  # the teacher sees every token
    target = whiten(Visible.from_mask(mask).gather(full))
    assert target.shape == (4, 4, 48)  # 16 tokens, 4 visible
    pred = s.distill.head(s.encode(s.tokenize(x), mask).tokens)
    torch.testing.assert_close(out.extras["loss_distill"], F.mse_loss(pred, target), rtol=1e-5, atol=1e-6)


def RANDOM_MASK() -> torch.Tensor:
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(4, 16, dtype=torch.bool)
    mask.scatter_(1, noise.argsort(dim=1)[:, :4], False)
    return mask


def test_g2sd_matches_every_row_of_the_teacher_decoder_after_four_blocks(teacher_ckpt):
    distill = {"_target_": "mae_zoo.distill.G2SD", "teacher_decoder_block": 3}
    s = student(checkpoint_teacher(teacher_ckpt, decoder=True), distill)
    x, mask = images(), RANDOM_MASK()
    out = s(x, mask=mask)
    teacher = load(teacher_ckpt)
    target = teacher(x, mask=mask, keep_decoder=[3]).decoder_hidden[0]
    assert target.shape == (4, 17, 24)  # cls + all 16 tokens, visible and hidden
    pred = s.distill.head(s(x, mask=mask, keep_decoder=[-1]).decoder_hidden[0])
    expected = F.smooth_l1_loss(pred, whiten(target), beta=2.0)
    torch.testing.assert_close(out.extras["loss_distill"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.extras["loss_distill"])  # recon_weight 0, as the official generic stage


def test_maskalign_matches_fused_student_layers_with_the_teachers_top_k_at_visible_positions(teacher_ckpt):
    """Written out by hand: student blocks mixed by the fusion rows, one head per teacher layer, against
    the whitened full-input teacher layers 2 and 3 (top 2 of 4) gathered at the visible tokens + cls."""
    distill = {"_target_": "mae_zoo.distill.MaskAlign", "top_k": 2, "fusion": "sum"}
    s = student(checkpoint_teacher(teacher_ckpt), distill)
    x, mask = images(), RANDOM_MASK()
    out = s(x, mask=mask)
    d = s.distill
    assert d.teacher_layers == (2, 3) and d.weights.shape == (2, 3) and len(d.heads) == 2
    torch.testing.assert_close(d.weights.detach(), torch.full((2, 3), 1 / 3))
    hidden = s.encode(s.tokenize(x), mask, keep=[0, 1, 2]).intermediates  # (B, 1 + 4, 32) each
    teacher = load(teacher_ckpt)
    visible = Visible.from_mask(mask)
    expected = torch.zeros(())
    for row, layer in enumerate((2, 3)):
        full = whiten(teacher.forward_intermediates(x, [layer])[0])
        target = torch.cat([full[:, :1], visible.gather(full[:, 1:])], dim=1)
        fused = sum(d.weights[row, i] * hidden[i] for i in range(3))
        expected = expected + F.smooth_l1_loss(d.heads[row](fused), target) / 2
    torch.testing.assert_close(out.extras["loss_distill"], 2 * expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.extras["loss_distill"])  # no reconstruction term
    with pytest.raises(ConfigError, match="use distill.fusion=sum for unequal depths"):
        student(checkpoint_teacher(teacher_ckpt), {**distill, "fusion": "linear"}).configure_model()


def test_attention_guided_masking_keeps_the_tokens_the_teacher_cls_attends_to(teacher_ckpt):
    from mae_zoo.nets.vit import attention_weights

    teacher = load(teacher_ckpt)
    block, x = teacher.encoder.blocks[0], torch.randn(2, 17, 48)
    weights = attention_weights(block, x)  # recomputed maps reproduce the fused SDPA block output
    attn = block.attn
    v = attn.qkv(block.norm1(x)).reshape(2, 17, 3, 2, 24).permute(2, 0, 3, 1, 4)[2]
    torch.testing.assert_close(attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, 48)), attn(block.norm1(x)))
    distill = {"_target_": "mae_zoo.distill.MaskAlign", "top_k": 2, "fusion": "sum", "mask": "attention"}
    s = student(checkpoint_teacher(teacher_ckpt), distill)
    s.configure_model()
    importance = s.teacher.cls_attention(images())
    assert importance.shape == (4, 16) and torch.all(importance > 0)
    peaked = torch.full((4, 16), 1e-9)
    peaked[:, [1, 5, 9, 14]] = 1.0  # 4 = int(16 * 0.25) visible tokens
    s.teacher.cls_attention = lambda batch: peaked  # type: ignore[method-assign]
    mask = s.distill.propose_mask(s, images(), s.teacher, torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [12] * 4
    assert (~mask).nonzero()[:, 1].view(4, 4).tolist() == [[1, 5, 9, 14]] * 4


@pytest.mark.parametrize("hidden", [12, 4])
def test_dmjd_second_view_hides_as_many_tokens_taking_the_first_views_visible_ones_first(hidden):
    from mae_zoo.distill.dmjd import disjoint_view

    noise = torch.rand(64, 16, generator=torch.Generator().manual_seed(0))
    first = torch.zeros(64, 16, dtype=torch.bool)
    first.scatter_(1, noise.argsort(dim=1)[:, :hidden], True)
    first[0] = False  # a sample with nothing hidden stays so (per-sample counts)
    second = disjoint_view(first, torch.Generator().manual_seed(1))
    assert torch.equal(second.sum(dim=1), first.sum(dim=1))  # each view keeps its masking rate
    extra = (second & ~first).sum(dim=1)
    assert torch.equal(extra, torch.minimum(16 - first.sum(dim=1), first.sum(dim=1)))
    if hidden >= 8:  # ratio >= 0.5: disjoint visible sets, every token predicted by one view or the other
        assert not (~first[1:] & ~second[1:]).any() and (first | second)[1:].all()
    else:  # ratio < 0.5: every token the first view hid is visible in the second
        assert not (first & second).any()
    assert not torch.equal(second, disjoint_view(first, torch.Generator().manual_seed(2)))  # drawn, not fixed


def test_dmjd_loss_is_the_official_mean_over_both_views_of_both_branches():
    """Written out by hand: the decoder's loss on each view's hidden tokens, the visible branch's
    Smooth-L1 (beta 2) against the norm-pix targets of each view's visible tokens, averaged over views."""
    from mae_zoo.distill.dmjd import disjoint_view
    from mae_zoo.objectives.base import normalize_per_token

    s = student(None, {"_target_": "mae_zoo.distill.DMJD"})
    x, mask = images(), RANDOM_MASK()
    out = s(x, mask=mask, generator=torch.Generator().manual_seed(7))
    second = disjoint_view(mask, torch.Generator().manual_seed(7))
    assert not (~mask & ~second).any()  # 12 of 16 hidden: disjoint visible sets
    d, tokens = s.distill, s.tokenize(x)
    target = normalize_per_token(tokens.target)

    def view(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = s.encode(tokens, m)
        pred = s.decoder(encoded).pred
        recon = (((pred - target) ** 2).mean(dim=-1) * m).sum() / m.sum()
        vis = F.smooth_l1_loss(d.predictor(d.projector(encoded.tokens)), Visible.from_mask(m).gather(target), beta=2.0)
        return recon, vis

    (r1, v1), (r2, v2) = view(mask), view(second)
    torch.testing.assert_close(out.extras["loss_recon"], r1)
    torch.testing.assert_close(out.extras["loss_second_view"], 0.5 * r2)
    torch.testing.assert_close(out.extras["loss_distill"], (v1 + v2) / 2)
    torch.testing.assert_close(out.loss, 0.5 * r1 + 0.5 * r2 + (v1 + v2) / 2)
    assert s.teacher is None  # DMJD distils within the student


def test_hybrid_distill_matches_relation_teacher_attention_and_feature_teacher_output(teacher_ckpt, tmp_path):
    """Relations: a relation teacher that is the student's own copy has, at block 0, exactly the
    student's attention among the visible tokens once restricted and renormalised, so the KL is zero;
    against its block 1 it is not. Features: written out by hand against the feature teacher."""
    own = save_model(student(None, None), tmp_path / "own.ckpt")
    x, mask = images(), RANDOM_MASK()
    for j, zero in ((0, True), (1, False)):
        distill = {
            "_target_": "mae_zoo.distill.HybridDistill",
            "relation_teacher": checkpoint_teacher(own),
            "relation_blocks": [0],
            "teacher_relation_blocks": [j],
        }
        s = student(checkpoint_teacher(teacher_ckpt), distill)
        out = s(x, mask=mask)
        assert (out.extras["loss_relation"].item() < 1e-5) == zero, (j, out.extras)
    torch.testing.assert_close(out.loss, out.extras["loss_feature"] + out.extras["loss_relation"])  # recon weight 0
    teacher = load(teacher_ckpt)
    full = teacher.forward_intermediates(x, [-1])[0]  # the feature teacher sees every token
    visible = Visible.from_mask(mask)
    target = whiten(torch.cat([full[:, :1], visible.gather(full[:, 1:])], dim=1))
    last = s.encode(s.tokenize(x), mask, keep=[-1]).intermediates[0]  # cls + 4 visible rows
    torch.testing.assert_close(out.extras["loss_feature"], F.mse_loss(s.distill.head(last), target))
    with pytest.raises(ConfigError, match="needs distill.relation_teacher"):
        student(checkpoint_teacher(teacher_ckpt), {"_target_": "mae_zoo.distill.HybridDistill"}).configure_model()


def test_the_teacher_gets_no_gradient_and_stays_out_of_optimizer_and_state_dict(teacher_ckpt):
    s = student(
        checkpoint_teacher(teacher_ckpt), {"_target_": "mae_zoo.distill.DMAE", "student_block": 1, "teacher_block": 2}
    )
    s.configure_model()
    s.train()
    s(images()).loss.backward()
    teacher = s.teacher
    assert teacher is not None and not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in s.state_dict())
    ids = {id(p) for p in s.parameters()}
    assert not ids & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in s.distill.parameters()} <= ids  # the projection head is trained
    s.to(torch.float64)  # moved and cast with the student
    assert next(teacher.parameters()).dtype == torch.float64


def test_ema_update_follows_data2vec_schedule():
    s = student(
        {"_target_": "mae_zoo.teachers.EMATeacher", "decay": 0.9, "end_decay": 0.99, "anneal_steps": 10},
        {"_target_": "mae_zoo.distill.MRMAE"},
    )
    s.configure_model()
    teacher = s.teacher
    assert isinstance(teacher, EMATeacher)
    assert [teacher.decay_at(k) for k in (0, 5, 10, 50)] == pytest.approx([0.9, 0.945, 0.99, 0.99])
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    teacher.update(s)
    student_now = s.state_dict()
    for name, param in teacher.model.named_parameters():
        torch.testing.assert_close(param, 0.9 * before[name] + 0.1 * student_now[name])
    assert teacher.updates == 1


def test_start_up_errors_say_what_is_wrong(teacher_ckpt, tmp_path):
    dmae = {"_target_": "mae_zoo.distill.DMAE", "student_block": 1, "teacher_block": 2}
    with pytest.raises(ConfigError, match="does not exist"):
        student(checkpoint_teacher(str(tmp_path / "none.ckpt")), dmae)
    with pytest.raises(ConfigError, match="needs a teacher"):
        student(None, dmae).configure_model()
    with pytest.raises(ConfigError, match="block 17 is out of range for the teacher"):
        student(checkpoint_teacher(teacher_ckpt), {**dmae, "teacher_block": 17}).configure_model()
    other = save_model(ImageMAE(**BIG, **{**SIZES, "patch_size": 8}, mask=RANDOM), tmp_path / "p8.ckpt")
    with pytest.raises(
        ConfigError, match=r"token layout grid:h,w \[2, 2\] differs from the student's grid:h,w \[4, 4\]"
    ):
        student(checkpoint_teacher(other), dmae).configure_model()
    with pytest.raises(ConfigError, match="teacher.decoder=true"):
        student(checkpoint_teacher(teacher_ckpt), {"_target_": "mae_zoo.distill.G2SD"}).configure_model()
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        TimmTeacher("vit_tiny_patch16_224", str(tmp_path / "missing.safetensors"))


def test_timm_and_hf_teachers_hand_out_their_own_hidden_states_in_student_order(tmp_path):
    import timm
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    kwargs = {"img_size": 16, "patch_size": 4, "in_chans": 1, "depth": 3, "embed_dim": 24, "num_heads": 2}
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs).eval()
    save_file(net.state_dict(), tmp_path / "vit.safetensors")
    mask = RANDOM_MASK()
    x = images()
    teacher = TimmTeacher("vit_tiny_patch16_224", str(tmp_path / "vit.safetensors"), kwargs, mean=[0.0], std=[1.0])
    got = teacher.hidden_states(x, [2, 0], mask)
    rows = [
        x
        for x in net.forward_intermediates(
            x, indices=[0, 2], norm=False, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
    ]
    full = [torch.cat([prefix, tok], dim=1) for tok, prefix in rows]
    visible = Visible.from_mask(mask)
    for mine, theirs in zip(got, [full[1], full[0]]):  # asked order [2, 0]
        torch.testing.assert_close(mine, torch.cat([theirs[:, :1], visible.gather(theirs[:, 1:])], dim=1))
    s = student(
        {
            "_target_": "mae_zoo.teachers.TimmTeacher",
            "name": "vit_tiny_patch16_224",
            "path": str(tmp_path / "vit.safetensors"),
            "model_kwargs": kwargs,
            "mean": [0.0],
            "std": [1.0],
        },
        {"_target_": "mae_zoo.distill.DMAE", "student_block": 1, "teacher_block": 2},
    )
    assert torch.isfinite(s(x).extras["loss_distill"])

    config = Dinov2Config(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    hf = HFTeacher(str(tmp_path / "dino"), mean=[0.0], std=[1.0])
    assert (hf.layout.shape, hf.depth, hf.dim, hf.num_prefix) == ((4, 4), 2, 24, 1)
    reference = Dinov2Model.from_pretrained(tmp_path / "dino").eval()(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(hf.hidden_states(x, [-1], None)[0], reference.hidden_states[2])
    eager = Dinov2Model.from_pretrained(tmp_path / "dino", attn_implementation="eager").eval()
    maps = eager(pixel_values=x, output_attentions=True).attentions[-1]
    torch.testing.assert_close(hf.cls_attention(x), maps[:, :, 0, 1:].mean(dim=1))
    last = net.blocks[-1].attn
    last.fused_attn = False  # timm's unfused path hands its softmax maps through attn_drop
    seen: list[torch.Tensor] = []
    last.attn_drop.register_forward_hook(lambda _m, _args, out: seen.append(out))
    net(x)  # the teacher normalises with mean 0, std 1: the same input
    torch.testing.assert_close(teacher.cls_attention(x), seen[-1][:, :, 0, 1:].mean(dim=1))


def test_distill_smoke_runs_on_image_and_video(tmp_path):
    quiet = [*FAST, "callbacks.reconstructions=null", "callbacks.online_probe.enabled=false"]
    assert train(compose_cfg(quiet, tmp_path / "teacher"))["train/loss"] > 0
    ckpt = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    for name, overrides in {
        "dmae": ["teacher=checkpoint", f"teacher.path={ckpt}", "distill=dmae", "distill.student_block=0",
                 "distill.teacher_block=1", "objective.norm_pix_loss=false"],
        "g2sd": ["teacher=checkpoint", f"teacher.path={ckpt}", "teacher.decoder=true", "distill=g2sd",
                 "distill.teacher_decoder_block=0"],
        "ema": ["teacher=ema", "distill=mrmae"],
        "maskalign": ["teacher=ema", "distill=maskalign", "distill.top_k=2", "distill.mask=attention"],
        "video": ["modality=video", "model=videomae_micro", "teacher=ema", "distill=dmae", "distill.student_block=0",
                  "distill.teacher_block=-1"],
        "hybrid": ["teacher=checkpoint", f"teacher.path={ckpt}", "distill=hybrid",
                   f"distill.relation_teacher.path={ckpt}"],
        "video_dmjd": ["modality=video", "model=videomae_micro", "distill=dmjd"],
    }.items():  # fmt: skip
        metrics = train(compose_cfg([*quiet, *overrides], tmp_path / name))
        terms = ("train/loss_feature", "train/loss_relation") if name == "hybrid" else ("train/loss_distill",)
        assert all(metrics[t] > 0 for t in terms) and "train/loss_recon" in metrics, name
    saved = torch.load(tmp_path / "dmae" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["mae_zoo"]["teacher"]["path"] == str(ckpt) and len(saved["mae_zoo"]["teacher"]["sha256"]) == 64
    hybrid = torch.load(tmp_path / "hybrid" / "checkpoints" / "last.ckpt", weights_only=True)
    assert hybrid["mae_zoo"]["distill_teachers"][0]["path"] == str(ckpt)  # both teachers are recorded


def test_graph_models_refuse_a_transformer_distillation(make_cfg):
    with pytest.raises(ConfigError, match="reads transformer token features.*'graph' layout"):
        train(make_cfg("modality=graph", "model=gat", "teacher=ema", "distill=mrmae", "logger=none", "callbacks=none"))


def test_an_ema_distilled_run_resumes_exactly(tmp_path, monkeypatch) -> None:
    overrides: list[Any] = [*IMAGE, "data.num_workers=0", "teacher=ema", "distill=mrmae"]
    saved = kill_resume_and_compare(overrides, 23, tmp_path, monkeypatch)
    assert saved["ema_teacher"]["updates"] == saved["global_step"]
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in straight["ema_teacher"]["state_dict"].items():
        assert torch.equal(value, resumed["ema_teacher"]["state_dict"][key]), key
    assert load(tmp_path / "killed" / "checkpoints" / "last.ckpt").distill is None  # the student alone
