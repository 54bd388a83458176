"""Tiny teacher checkpoints in Hugging Face format, built offline.

Tests (and the local world) need checkpoints that load through the very call that loads
``google/siglip2-*``: ``AutoModel`` / ``AutoProcessor.from_pretrained(path)``. Nothing here downloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2
MAX_TEXT_LENGTH = 64

DEFAULT_VOCAB_WORDS = (
    "a an the of and in on at with to is are photo picture image small large big tiny "
    "red green blue yellow orange purple black white gray pink brown cyan "
    "circle square triangle star cross ring shape shapes "
    "top bottom left right center middle upper lower corner near next above below "
    "one two three cat dog"
).split()

_WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")  # the Whitespace pre-tokenizer


def caption_words(captions: Iterable[str]) -> list[str]:
    """The sorted set of lowercased words (and punctuation marks) the whitespace tokenizer will see."""
    words: set[str] = set()
    for caption in captions:
        words.update(_WORD_PATTERN.findall(caption.lower()))
    return sorted(words)


def build_tokenizer(vocab_words: Iterable[str], *, max_length: int = MAX_TEXT_LENGTH):
    """A word-level tokenizer over ``vocab_words`` (lowercase normaliser, eos appended), as a
    ``PreTrainedTokenizerFast`` that ``AutoTokenizer`` / ``AutoProcessor`` reload offline."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in vocab_words}):
        if word not in vocab:
            vocab[word] = len(vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    eos_id = vocab[EOS_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, eos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
        # Like SiglipTokenizer: the text tower was trained without an attention mask.
        model_input_names=["input_ids"],
    )
    return tokenizer


def build_siglip2_tokenizer(texts: Iterable[str], *, max_length: int = MAX_TEXT_LENGTH):
    """A ``Siglip2Tokenizer`` (Gemma-style BPE with lowercasing) over a small BPE trained on ``texts``.

    ``AutoTokenizer`` always loads checkpoints of model type ``siglip2`` as ``Siglip2Tokenizer``
    (transformers lists it among models with an incorrect Hub tokenizer class), so a NaFlex
    checkpoint must ship a vocabulary that class rebuilds from ``vocab`` + ``merges``.
    """
    import json

    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Siglip2Tokenizer

    backend = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(merge) for merge in model["merges"]]
    return Siglip2Tokenizer(
        vocab=model["vocab"], merges=merges, padding_side="right", model_max_length=max_length
    )


def build_image_processor(kind: Literal["siglip", "siglip2"], *, image_size: int, patch_size: int):
    """The image processor of a SigLIP 2 checkpoint: bilinear, mean = std = 0.5, square, no crop."""
    if kind == "siglip":
        from transformers import SiglipImageProcessor

        return SiglipImageProcessor(
            size={"height": image_size, "width": image_size},
            resample=2,  # bilinear, like the SigLIP 2 preprocessor files
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    if kind == "siglip2":
        from transformers import Siglip2ImageProcessor

        side_patches = image_size // patch_size
        return Siglip2ImageProcessor(
            patch_size=patch_size,
            max_num_patches=side_patches * side_patches,
            resample=2,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    raise ValueError(f"kind must be 'siglip' or 'siglip2', got {kind!r}")


def build_processor(kind: Literal["siglip", "siglip2"], tokenizer, *, image_size: int, patch_size: int):
    image_processor = build_image_processor(kind, image_size=image_size, patch_size=patch_size)
    if kind == "siglip":
        from transformers import SiglipProcessor

        return SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    from transformers import Siglip2Processor

    return Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)


def build_config(
    kind: Literal["siglip", "siglip2"],
    *,
    vocab_size: int,
    image_size: int,
    patch_size: int,
    hidden: int,
    vision_layers: int = 2,
    text_layers: int = 2,
    heads: int = 2,
    mlp_ratio: int = 2,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
):
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * mlp_ratio,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TEXT_LENGTH,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        projection_size=hidden,
    )
    vision = dict(
        hidden_size=hidden,
        intermediate_size=hidden * mlp_ratio,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        patch_size=patch_size,
    )
    if kind == "siglip":
        from transformers import SiglipConfig

        return SiglipConfig(text_config=text, vision_config={**vision, "image_size": image_size})
    if kind == "siglip2":
        from transformers import Siglip2Config

        side_patches = image_size // patch_size
        return Siglip2Config(text_config=text, vision_config={**vision, "num_patches": side_patches**2})
    raise ValueError(f"kind must be 'siglip' or 'siglip2', got {kind!r}")


def save_tiny_teacher(
    path: str | Path,
    *,
    kind: Literal["siglip", "siglip2"] = "siglip",
    vocab_words: Iterable[str] = DEFAULT_VOCAB_WORDS,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    seed: int = 0,
) -> Path:
    """Save a random-weight SiglipModel (``kind="siglip"``) or Siglip2Model (``"siglip2"``, NaFlex)
    with its processor to ``path``; returns ``path``. For unit tests: it has learnt nothing."""
    import torch
    from transformers import Siglip2Model, SiglipModel

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_words = list(vocab_words)
    if kind == "siglip2":
        tokenizer = build_siglip2_tokenizer([" ".join(vocab_words), *vocab_words])
    else:
        tokenizer = build_tokenizer(vocab_words)
    config = build_config(
        kind,
        vocab_size=len(tokenizer),
        image_size=image_size,
        patch_size=patch_size,
        hidden=hidden,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model_class = SiglipModel if kind == "siglip" else Siglip2Model
    model = model_class(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.log(torch.tensor(10.0))))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(path)
    build_processor(kind, tokenizer, image_size=image_size, patch_size=patch_size).save_pretrained(path)
    return path
