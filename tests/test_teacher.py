"""Teacher loading and embedding (tiny random SiglipModel / Siglip2Model), local-teacher training."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tinysiglip.errors import TinySigLIPError
from tinysiglip.teacher import Teacher, TeacherLoadError, load_teacher
from tinysiglip.teacher.hf import _as_embedding

# embed_pixels(resize_to_uint8(img)) vs the processor + model: same resize, same arithmetic up to
# float32 rounding (measured ~2e-6 on these checkpoints).
PIXEL_PATH_ATOL = 1e-4


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def teacher(request, tiny_teacher_dir) -> Teacher:
    return load_teacher(tiny_teacher_dir(request.param))


def test_loads_through_auto_classes(teacher: Teacher, tiny_teacher_dir):
    from transformers import AutoModel, AutoProcessor

    expected = {"siglip": "SiglipModel", "siglip2": "Siglip2Model"}[teacher.kind]
    assert type(teacher.model).__name__ == expected
    assert type(AutoModel.from_pretrained(tiny_teacher_dir(teacher.kind))).__name__ == expected
    assert AutoProcessor.from_pretrained(tiny_teacher_dir(teacher.kind)).image_processor is not None
    assert not teacher.model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in teacher.model.parameters())
    assert teacher.embed_dim == 32 and teacher.image_size == 32
    assert teacher.image_mean == (0.5, 0.5, 0.5) and teacher.image_std == (0.5, 0.5, 0.5)
    assert teacher.resample == 2  # bilinear, as the processor file says
    assert teacher.logit_scale == pytest.approx(10.0) and teacher.logit_bias == pytest.approx(-10.0)


def test_embedding_shapes(teacher: Teacher):
    pixels = torch.from_numpy(np.stack([teacher.resize_to_uint8(im) for im in _images([(40, 40)] * 3)]))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 32, 32)
    image_embeds = teacher.embed_pixels(pixels)
    text_embeds = teacher.embed_token_ids(teacher.tokenize(["a red circle", "a blue square"]))
    assert image_embeds.shape == (3, 32) and image_embeds.dtype == torch.float32
    assert text_embeds.shape == (2, 32) and text_embeds.dtype == torch.float32
    # NOT normalised: these are pooler outputs.
    assert not torch.allclose(image_embeds.norm(dim=-1), torch.ones(3), atol=1e-3)


def test_tokenize_lowercases_and_pads_right_to_64(teacher: Teacher):
    ids = teacher.tokenize(["A RED Circle", "a red circle", "a blue square at the top left"])
    assert ids.shape == (3, 64) and ids.dtype == torch.long
    assert torch.equal(ids[0], ids[1])
    pad = teacher.tokenizer.pad_token_id
    assert ids[0, -1] == pad and ids[0, 0] != pad  # right padding: the pooled last slot is padding
    assert (ids[:, :2] != teacher.tokenizer.unk_token_id).all()
    long_caption = " ".join(["red"] * 200)
    assert teacher.tokenize([long_caption]).shape == (1, 64)


def test_embed_token_ids_matches_model_on_processor_output(teacher: Teacher):
    captions = ["a red circle", "two shapes: a blue square and a green circle"]
    inputs = teacher.processor(
        text=[c.lower() for c in captions],
        padding="max_length",
        max_length=64,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = teacher.model.get_text_features(input_ids=inputs["input_ids"]).pooler_output
    assert torch.allclose(teacher.embed_token_ids(inputs["input_ids"]), expected, atol=1e-6)
    assert torch.allclose(teacher.embed_texts(captions), expected, atol=1e-6)


def test_embed_pixels_matches_processor_path(teacher: Teacher):
    # Square images of several sizes (NaFlex keeps the aspect ratio, so only squares map to our grid).
    images = _images([(32, 32), (50, 50), (97, 97), (20, 20)])
    pixels = torch.from_numpy(np.stack([teacher.resize_to_uint8(im) for im in images]))
    via_pixels = teacher.embed_pixels(pixels)
    via_processor = teacher.embed_images(images)
    assert torch.allclose(via_pixels, via_processor, atol=PIXEL_PATH_ATOL), (
        (via_pixels - via_processor).abs().max()
    )

    # The image processor itself: Siglip2Processor.__call__ forces patch_size 16 / 256 patches (its
    # class-level images_kwargs beat the image processor's config), which only real NaFlex files match.
    inputs = teacher.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        direct = teacher.model.get_image_features(**inputs).pooler_output
    assert torch.allclose(via_processor, direct, atol=1e-6)


def test_siglip_pil_backend_processor_also_matches(tiny_teacher_dir):
    from transformers import AutoProcessor

    teacher = load_teacher(tiny_teacher_dir("siglip"))
    teacher.processor = AutoProcessor.from_pretrained(tiny_teacher_dir("siglip"), backend="pil")
    assert not teacher.uses_torchvision_resize
    images = _images([(50, 70), (33, 33)])
    pixels = torch.from_numpy(np.stack([teacher.resize_to_uint8(im) for im in images]))
    assert torch.allclose(teacher.embed_pixels(pixels), teacher.embed_images(images), atol=PIXEL_PATH_ATOL)


def test_naflex_patch_layout_matches_processor(tiny_teacher_dir):
    teacher = load_teacher(tiny_teacher_dir("siglip2"))
    image = _images([(32, 32)])[0]
    pixels = torch.from_numpy(teacher.resize_to_uint8(image))[None]
    ours = teacher.naflex_inputs(teacher.normalize_pixels(pixels))
    theirs = teacher.image_processor(images=[image], return_tensors="pt")
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-6)
    assert torch.equal(ours["spatial_shapes"], theirs["spatial_shapes"].long())
    assert torch.equal(ours["pixel_attention_mask"].long(), theirs["pixel_attention_mask"].long())


def test_fingerprints_and_special_ids(tiny_teacher_dir):
    first = load_teacher(tiny_teacher_dir("siglip"))
    again = load_teacher(tiny_teacher_dir("siglip"))
    other = load_teacher(tiny_teacher_dir("siglip2"))
    assert first.fingerprints() == again.fingerprints()
    assert set(first.fingerprints()) == {"processor", "tokenizer"}
    assert first.fingerprints()["processor"] != other.fingerprints()["processor"]
    assert first.fingerprints()["tokenizer"] != other.fingerprints()["tokenizer"]
    special = first.special_token_ids()
    assert first.tokenizer.pad_token_id in special and first.tokenizer.eos_token_id in special


def test_plain_tensor_features_are_accepted():
    tensor = torch.randn(2, 4)
    assert _as_embedding(tensor) is tensor


def test_unreachable_hub_gives_helpful_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherLoadError) as caught:
        load_teacher("google/siglip2-base-patch16-224")
    message = str(caught.value)
    assert isinstance(caught.value, TinySigLIPError)
    assert "could not be reached" in message
    assert "huggingface-cli download google/siglip2-base-patch16-224" in message
    assert "snapshot_download" in message and "HF_HOME" in message and "local world" in message


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherLoadError, match="does not exist"):
        load_teacher(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherLoadError, match="no config.json"):
        load_teacher(tmp_path / "empty")


def test_info_command_prints_teacher_facts(tiny_teacher_dir, capsys):
    from tinysiglip.teacher.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["teacher", "info", str(tiny_teacher_dir("siglip2")), "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "siglip2" and info["embed_dim"] == 32 and info["image_size"] == 32
    assert set(info["fingerprints"]) == {"processor", "tokenizer"}


# -- local teacher ------------------------------------------------------------------------------------

TINY_LOCAL = dict(
    steps=3, batch_size=8, image_size=32, patch_size=8, hidden=32, vision_layers=1, text_layers=1, heads=2
)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    from tinysiglip.data import make_shapes

    return make_shapes(
        tmp_path_factory.mktemp("shapes"), seed=0, sizes={"train": 16, "val": 6, "test": 6}, image_size=32
    )


def test_local_teacher_trains_saves_and_is_reused(tiny_shapes, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoProcessor

    import tinysiglip.teacher.local as local

    train, val, test = (tiny_shapes.load(split) for split in ("train", "val", "test"))
    out = local.train_local_teacher(
        train, tmp_path / "teacher", val=val, test=test, progress=False, **TINY_LOCAL
    )

    assert type(AutoModel.from_pretrained(out)).__name__ == "SiglipModel"
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.size == {"height": 32, "width": 32}
    teacher = load_teacher(out)
    assert teacher.kind == "siglip" and teacher.embed_dim == 32
    # Every training word is in the vocabulary: no caption tokenizes to <unk>.
    ids = teacher.tokenize([c for r in train.records for c in r.captions])
    assert not (ids == teacher.tokenizer.unk_token_id).any()

    marker = json.loads((out / local.MARKER_FILE).read_text())
    assert marker["seed"] == 0 and marker["config"]["steps"] == 3
    assert set(marker["retrieval"]) == {"val", "test"}
    assert {"i2t_r1", "t2i_r1", "chance_t2i_r1"} <= set(marker["retrieval"]["test"])

    # Reuse: same config, seed and data -> no training (decoding would be the first thing it does).
    def fail(*args, **kwargs):
        raise AssertionError("retrained although a complete teacher was there")

    monkeypatch.setattr(local, "_decode_pixels", fail)
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert local.train_local_teacher(train, out, val=val, test=test, progress=False, **TINY_LOCAL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    # A different seed is a different teacher.
    with pytest.raises(AssertionError, match="retrained"):
        local.train_local_teacher(train, out, val=val, test=test, seed=1, progress=False, **TINY_LOCAL)


def test_local_teacher_refuses_unknown_options_and_foreign_folders(tiny_shapes, tmp_path):
    from tinysiglip.teacher.local import LocalTeacherError, train_local_teacher

    train = tiny_shapes.load("train")
    with pytest.raises(LocalTeacherError, match="unknown option"):
        train_local_teacher(train, tmp_path / "t", hiden=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LocalTeacherError, match="not a local teacher folder"):
        train_local_teacher(train, foreign, progress=False, **TINY_LOCAL)
    assert (foreign / "notes.txt").exists()


def test_fingerprints_do_not_change_when_the_tokenizer_is_used(tiny_teacher_dir):
    from tinysiglip.teacher import load_teacher

    teacher = load_teacher(tiny_teacher_dir("siglip"))
    before = teacher.fingerprints()
    teacher.tokenize(["a red circle"])
    assert teacher.fingerprints() == before
