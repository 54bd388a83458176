"""Tests for tinysiglip.students: TokenVocab, text tower pooling, registry, save/load, processor path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tinysiglip.students import (
    OVERRIDE_KEYS,
    TextTower,
    TinySigLIP,
    TinySigLIPEncoder,
    TokenVocab,
    create_student,
    list_students,
    load_student,
)

PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIALS = {"pad": PAD, "eos": EOS, "bos": BOS, "unk": UNK}


def make_vocab(present=(5, 9, 100, 7, 7, 42), teacher_vocab_size=256_000):
    return TokenVocab(list(present), pad_id=PAD, special_ids=SPECIALS, teacher_vocab_size=teacher_vocab_size)


def padded(rows, length=64, pad=PAD):
    out = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------- TokenVocab
def test_vocab_maps_present_and_special_ids_to_distinct_rows():
    v = make_vocab()
    kept = [PAD, EOS, BOS, UNK, 5, 7, 9, 42, 100]
    rows = v(torch.tensor(kept))
    assert v.num_rows == len(kept) + 1
    assert rows.tolist() == list(range(1, len(kept) + 1))  # distinct, non-unknown
    assert len(set(rows.tolist())) == len(kept)
    assert TokenVocab.UNKNOWN_ROW not in rows.tolist()


def test_vocab_absent_and_out_of_range_ids_go_to_unknown():
    v = make_vocab()
    ids = torch.tensor([[4, 6, 8, 101, 255_999], [256_000, 10**9, -1, -5, 43]])
    assert (v(ids) == TokenVocab.UNKNOWN_ROW).all()
    assert v(ids).shape == ids.shape
    # any integer dtype
    assert v(torch.tensor([5, 4], dtype=torch.int32)).tolist() == [v.row_of(5), 0]


def test_vocab_rejects_ids_outside_teacher_vocab():
    with pytest.raises(ValueError, match="outside the teacher vocabulary"):
        TokenVocab([5, 300], pad_id=PAD, teacher_vocab_size=100)
    with pytest.raises(ValueError, match=">= 0"):
        TokenVocab([-2, 5], pad_id=PAD)


def test_vocab_accepts_special_list_and_numpy_and_adds_pad():
    import numpy as np

    v = TokenVocab(np.array([9, 5], dtype=np.int32), pad_id=1, special_ids=[2, 3])
    assert v.token_ids.tolist() == [1, 2, 3, 5, 9]
    assert v.special_ids["pad"] == 1


def test_vocab_round_trip(tmp_path):
    v = make_vocab()
    v2 = TokenVocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert torch.equal(v.token_ids, v2.token_ids)
    assert (v2.pad_id, v2.special_ids, v2.teacher_vocab_size) == (
        v.pad_id,
        v.special_ids,
        v.teacher_vocab_size,
    )
    v.save(tmp_path / "vocab.json")
    v3 = TokenVocab.load(tmp_path / "vocab.json")
    probe = torch.arange(-3, 120)
    assert torch.equal(v(probe), v3(probe))
    # persistent, non-trainable buffer
    assert "token_ids" in v.state_dict()
    assert list(v.parameters()) == []


# ----------------------------------------------------------------------------- text tower
@pytest.fixture
def tower():
    torch.manual_seed(0)
    return TextTower(make_vocab(), width=32, layers=2, heads=4).eval()


def test_text_tower_batch_equals_rows_and_all_pad_is_finite(tower):
    ids = padded([[BOS, 5, 9, EOS], [5, 7, 42, 100, 4, 4, EOS], [], [9]])
    with torch.no_grad():
        batch = tower(ids)
        rows = torch.cat([tower(ids[i : i + 1]) for i in range(len(ids))])
    assert batch.shape == (4, 32)
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch, rows, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch[2], torch.zeros(32))  # all-pad row pools to zero


def test_text_tower_independent_of_padding_length(tower):
    caption = [BOS, 5, 9, 42, EOS]
    with torch.no_grad():
        full = tower(padded([caption], length=64))
        short = tower(padded([caption], length=12))
        exact = tower(torch.tensor([caption]))
    torch.testing.assert_close(full, short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-5)


def test_text_tower_rejects_too_long_input(tower):
    with pytest.raises(ValueError, match="max_length"):
        tower(torch.ones(1, 65, dtype=torch.long))


def test_text_tower_gradients_reach_embeddings(tower):
    tower.train()
    out = tower(padded([[5, 9], [42]]))
    out.sum().backward()
    assert tower.token_embedding.weight.grad is not None
    assert tower.token_embedding.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- registry
def test_list_students():
    assert {"vit_tiny", "vit_small", "resnet50", "mobilenetv3", "test_tiny"} <= set(list_students())


@pytest.mark.parametrize("name", ["test_tiny", "vit_tiny", "vit_small", "resnet50", "mobilenetv3"])
def test_every_student_builds_and_encodes(name):
    torch.manual_seed(0)
    model = create_student(name, embed_dim=24, image_size=64, vocab=make_vocab()).eval()
    ids = padded([[BOS, 5, 9, EOS], []])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), ids)
    assert out["image_embeds"].shape == (2, 24)
    assert out["text_embeds"].shape == (2, 24)
    assert torch.isfinite(out["image_embeds"]).all() and torch.isfinite(out["text_embeds"]).all()
    counts = model.parameter_counts()
    assert set(counts) == {"image_tower", "text_tower", "heads", "total"}
    assert counts["image_tower"] + counts["text_tower"] + counts["heads"] == counts["total"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    json.dumps(model.config)
    assert model.config["name"] == name and model.config["image_size"] == 64


def test_logit_scale_and_bias_init():
    model = create_student("test_tiny", embed_dim=8, image_size=32, vocab=make_vocab())
    assert model.logit_scale.requires_grad and model.logit_bias.requires_grad
    assert math.isclose(model.logit_scale.exp().item(), 10.0, rel_tol=1e-6)
    assert model.logit_bias.item() == -10.0


def test_vit_student_takes_other_resolutions():
    model = create_student("test_tiny", embed_dim=8, image_size=64, vocab=make_vocab()).eval()
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 8)
        assert model.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 8)


def test_overrides_are_applied_and_recorded():
    model = create_student(
        "test_tiny",
        embed_dim=16,
        image_size=32,
        vocab=make_vocab(),
        text_layers=3,
        text_width=48,
        text_heads=4,
    )
    assert len(model.text_tower.blocks) == 3
    assert model.text_tower.width == 48
    assert model.config["overrides"] == {"text_layers": 3, "text_width": 48, "text_heads": 4}


def test_unknown_student_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_student("vit_huge_nope", embed_dim=8, image_size=32, vocab=make_vocab())
    msg = str(err.value)
    assert "vit_huge_nope" in msg
    for name in list_students():
        assert name in msg


def test_unknown_override_lists_valid_overrides():
    with pytest.raises(ValueError) as err:
        create_student("test_tiny", embed_dim=8, image_size=32, vocab=make_vocab(), text_depth=3)
    msg = str(err.value)
    assert "text_depth" in msg
    for key in OVERRIDE_KEYS:
        assert key in msg


def test_unknown_timm_model_override():
    with pytest.raises(ValueError, match="unknown timm image model"):
        create_student("test_tiny", embed_dim=8, image_size=32, vocab=make_vocab(), image_model="nope_net")


def test_encode_image_rejects_uint8():
    model = create_student("test_tiny", embed_dim=8, image_size=32, vocab=make_vocab())
    with pytest.raises(ValueError, match="normalised"):
        model.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# ----------------------------------------------------------------------------- save / load
WORDS = ["<pad>", "</s>", "<s>", "<unk>", "a", "red", "square", "blue", "circle", "green"]


def tiny_processor_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessor

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", bos_token="<s>"
    )
    ip = SiglipImageProcessor(
        size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return tok, ip


def tiny_student(seed=0):
    torch.manual_seed(seed)
    vocab = TokenVocab([4, 5, 6, 7], pad_id=0, special_ids=SPECIALS, teacher_vocab_size=len(WORDS))
    return create_student("test_tiny", embed_dim=16, image_size=32, vocab=vocab, text_layers=2)


def test_save_load_round_trip_identical_outputs(tmp_path):
    model = tiny_student().eval()
    with torch.no_grad():
        model.logit_bias.fill_(-7.5)
    model.save_pretrained(tmp_path / "s", extra_config={"teacher": "local"})
    for name in ("model.safetensors", "student_config.json", "vocab.json"):
        assert (tmp_path / "s" / name).is_file()
    cfg = json.loads((tmp_path / "s" / "student_config.json").read_text())
    assert cfg["name"] == "test_tiny" and cfg["embed_dim"] == 16 and cfg["image_size"] == 32
    assert cfg["extra"] == {"teacher": "local"}

    loaded = TinySigLIP.from_pretrained(tmp_path / "s")
    assert not loaded.training
    pixels = torch.randn(3, 3, 32, 32)
    ids = padded([[2, 4, 5, 1], [9, 9], []])
    with torch.no_grad():
        a, b = model(pixels, ids), loaded(pixels, ids)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.config["overrides"] == {"text_layers": 2}
    assert loaded.parameter_counts() == model.parameter_counts()
    assert torch.equal(load_student(tmp_path / "s").vocab.token_ids, model.vocab.token_ids)


def test_saved_student_loads_from_its_own_architecture(tmp_path, monkeypatch):
    """A saved student carries its resolved architecture: loading never asks the registry."""
    from tinysiglip.students import registry

    model = tiny_student().eval()
    model.save_pretrained(tmp_path / "s")
    monkeypatch.setattr(registry, "_STUDENTS", {})  # no student name resolves any more
    loaded = load_student(tmp_path / "s")
    assert loaded.config["resolved"] == model.config["resolved"]
    assert loaded.parameter_counts() == model.parameter_counts()


def test_load_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_student().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("logit_bias")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="logit_bias"):
        load_student(tmp_path)


def test_load_missing_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="student_config.json"):
        load_student(tmp_path)


@pytest.mark.parametrize("combined", [True, False])
def test_encode_images_and_texts_through_saved_processor(tmp_path, combined):
    pytest.importorskip("transformers")
    from PIL import Image

    tok, ip = tiny_processor_parts()
    if combined:
        from transformers import SiglipProcessor

        source = SiglipProcessor(image_processor=ip, tokenizer=tok)
    else:
        source = [tok, ip]
    model = tiny_student().eval()
    model.save_pretrained(tmp_path / "s", processor=source)
    assert (tmp_path / "s" / "processor").is_dir()

    loaded = TinySigLIP.from_pretrained(tmp_path / "s")
    texts = ["A RED square", "a blue circle", ""]
    t = loaded.encode_texts(texts)
    assert t.shape == (3, 16)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    ids = tok(
        [s.lower() for s in texts], padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        expect = torch.nn.functional.normalize(model.encode_text(ids["input_ids"]), dim=-1)
    torch.testing.assert_close(t, expect)
    # lowercasing: "A RED square" == "a red square"
    torch.testing.assert_close(loaded.encode_texts(["a red square"])[0], t[0])

    images = [Image.new("RGB", (50, 40), "red"), Image.new("L", (20, 20), 128)]
    e = loaded.encode_images(images)
    assert e.shape == (2, 16)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    pixels = ip(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expect = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(e, expect)

    enc = TinySigLIPEncoder.from_pretrained(tmp_path / "s")
    torch.testing.assert_close(enc.encode_texts(texts), t)


def test_save_processor_from_teacher_directory_skips_weights(tmp_path):
    pytest.importorskip("transformers")
    from transformers import SiglipProcessor

    tok, ip = tiny_processor_parts()
    teacher_dir = tmp_path / "teacher"
    SiglipProcessor(image_processor=ip, tokenizer=tok).save_pretrained(teacher_dir)
    (teacher_dir / "model.safetensors").write_bytes(b"teacher weights")
    tiny_student().save_pretrained(tmp_path / "s", processor_dir=teacher_dir)
    assert not (tmp_path / "s" / "processor" / "model.safetensors").exists()
    loaded = load_student(tmp_path / "s")
    assert loaded.encode_texts(["green circle"]).shape == (1, 16)


def test_encode_texts_without_processor_is_clear():
    with pytest.raises(RuntimeError, match="no processor attached"):
        tiny_student().encode_texts(["a"])


def test_encoder_rejects_tokenizer_with_other_pad_id(tmp_path):
    pytest.importorskip("transformers")
    tok, ip = tiny_processor_parts()
    torch.manual_seed(0)
    vocab = TokenVocab([4, 5], pad_id=1, special_ids={"eos": 1})  # pad id 1, tokenizer pads with 0
    model = create_student("test_tiny", embed_dim=8, image_size=32, vocab=vocab)
    model.save_pretrained(tmp_path, processor=[tok, ip])
    with pytest.raises(ValueError, match="pad id"):
        load_student(tmp_path).encode_texts(["a red square"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_student_on_cuda_with_autocast():
    model = tiny_student().cuda()
    ids = padded([[2, 4, 5, 1], [], [300, 10**6]]).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.randn(3, 3, 32, 32, device="cuda"), ids)
    assert out["text_embeds"].device.type == "cuda"
    assert torch.isfinite(out["text_embeds"].float()).all()
    assert model.vocab(ids).device.type == "cuda"
