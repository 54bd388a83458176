"""Real-layout stand-ins of google/siglip2-base-patch16-224 (SiglipModel) and -naflex (Siglip2Model) on
non-square JPEGs: the stored teacher image embedding is what the checkpoint gives its users
(``processor(images=...)`` + ``get_image_features``) by default, and the student's square on request."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tinysiglip.cache import build_cache, open_cache
from tinysiglip.data import load_coco_captions
from tinysiglip.teacher import load_teacher
from tinysiglip.teacher.standins import (
    GEMMA_VOCAB_SIZE,
    STANDINS,
    save_standin_teacher,
    write_coco_captions,
    write_photos,
)

pytest.importorskip("transformers")

PHOTO_SIZES = ((640, 427), (375, 500), (500, 333), (427, 640), (612, 612))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    images = write_photos(root / "val2017", PHOTO_SIZES, grayscale_every=4)
    annotation = write_coco_captions(root / "annotations" / "captions_val2017.json", images)
    return load_coco_captions(annotation, root / "val2017")


@pytest.fixture(scope="module")
def narrow_standins(tmp_path_factory):
    """Both stand-ins at width 64: real vocabulary, processor and tokenizer files, real geometry."""
    root = tmp_path_factory.mktemp("standins")
    return {name: save_standin_teacher(root / name, name, width=64) for name in STANDINS}


@pytest.fixture(scope="module")
def loaded(narrow_standins):
    """Each stand-in loaded once: as our Teacher, and as its users load it (AutoModel/AutoProcessor)."""
    from transformers import AutoModel, AutoProcessor

    return {
        name: (
            load_teacher(folder),
            AutoModel.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoProcessor.from_pretrained(folder),
        )
        for name, folder in narrow_standins.items()
    }


def users_embeddings(folder, paths, model=None, processor=None) -> np.ndarray:
    """The checkpoint called the way its users call it, one image at a time."""
    from transformers import AutoModel, AutoProcessor

    model = model or AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    processor = processor or AutoProcessor.from_pretrained(folder)
    rows = []
    with torch.no_grad():
        for path in paths:
            inputs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
            rows.append(model.get_image_features(**inputs).pooler_output[0].numpy())
    return np.stack(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_standins_have_the_real_layout(narrow_standins, loaded):
    fixed, naflex = (narrow_standins[name] for name in STANDINS)
    assert json.loads((fixed / "config.json").read_text())["model_type"] == "siglip"
    assert json.loads((naflex / "config.json").read_text())["model_type"] == "siglip2"
    for folder in (fixed, naflex):
        config = json.loads((folder / "config.json").read_text())
        assert config["text_config"]["vocab_size"] == GEMMA_VOCAB_SIZE
        assert config["vision_config"]["patch_size"] == 16
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        assert tokenizer_config["tokenizer_class"] == "GemmaTokenizer"
    teacher, _, processor = loaded[STANDINS[0]]
    assert processor.image_processor.size == {"height": 224, "width": 224}
    assert loaded[STANDINS[1]][2].image_processor.max_num_patches == 256
    assert teacher.image_size == 224 and teacher.max_num_patches is None and not teacher.views_differ()
    assert len(teacher.tokenizer) == GEMMA_VOCAB_SIZE
    ids = teacher.tokenize(["A man riding a wave on top of a surfboard.", "two dogs playing in the snow"])
    assert ids.shape == (2, 64) and int(ids[0, -1]) == teacher.tokenizer.pad_token_id
    words = ids[(ids > 472)]
    assert words.numel() >= 8 and int(words.max()) > 128_000  # ids spread over the whole range
    naflex_teacher = loaded[STANDINS[1]][0]
    assert naflex_teacher.image_size == 256 and naflex_teacher.max_num_patches == 256
    assert naflex_teacher.views_differ()


def test_naflex_processor_keeps_the_aspect_ratio(loaded, photos):
    processor = loaded["siglip2-base-patch16-naflex"][2]
    image = Image.open(photos.records[0].path)  # 640 x 427
    shapes = processor(images=image, return_tensors="pt")["spatial_shapes"].tolist()
    assert shapes == [[13, 19]]  # as the real checkpoint does (DESIGN.md §3), not the 16 x 16 square


@pytest.mark.parametrize("name", STANDINS)
def test_stored_embeddings_equal_what_users_get(narrow_standins, loaded, photos, tmp_path, name):
    folder = narrow_standins[name]
    teacher, model, processor = loaded[name]
    out = build_cache(teacher, photos, tmp_path / "c.h5", batch_size=4, embed_dtype="float32", progress=False)
    cache = open_cache(out)
    assert cache.meta["teacher_view"] == "teacher"
    reference = users_embeddings(folder, [r.path for r in photos.records], model, processor)
    similarity = cosines(cache.image_embeds(), reference)
    assert similarity.min() > 0.99999, similarity
    np.testing.assert_allclose(cache.image_embeds(), reference, atol=2e-4)


def test_student_view_is_the_square_and_differs_for_naflex(loaded, photos, tmp_path):
    teacher = loaded["siglip2-base-patch16-naflex"][0]
    student = build_cache(
        teacher,
        photos,
        tmp_path / "s.h5",
        batch_size=4,
        embed_dtype="float32",
        teacher_view="student",
        progress=False,
    )
    own = build_cache(teacher, photos, tmp_path / "t.h5", batch_size=4, embed_dtype="float32", progress=False)
    student_cache, own_cache = open_cache(student), open_cache(own)
    np.testing.assert_array_equal(student_cache.pixels(), own_cache.pixels())  # the student reads the same
    squares = teacher.embed_pixels(torch.from_numpy(student_cache.pixels())).numpy()
    np.testing.assert_allclose(student_cache.image_embeds(), squares, atol=1e-4)
    assert cosines(student_cache.image_embeds(), own_cache.image_embeds()).min() < 0.9999
    assert student_cache.meta["request_fingerprint"] != own_cache.meta["request_fingerprint"]
    assert "aspect ratio kept, at most 256 patches" in own_cache.meta["teacher_view_detail"]
    with pytest.raises(Exception, match="teacher_view: expected 'teacher', found 'student'"):
        build_cache(teacher, photos, student, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", STANDINS)
def test_real_width_standins_on_photos(tmp_path, photos, name):
    """The real widths (768; 1 layer per tower), float16 as cached by default: cosine 1 to rounding."""
    folder = save_standin_teacher(tmp_path / name, name)
    out = build_cache(str(folder), photos, tmp_path / "c.h5", batch_size=4, progress=False)
    similarity = cosines(
        open_cache(out).image_embeds(), users_embeddings(folder, [r.path for r in photos.records])
    )
    assert similarity.min() > 0.9999, similarity
