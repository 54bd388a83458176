"""Students: timm image towers + a compact text tower over the teacher's token ids.

Usage::

    vocab = TokenVocab(cache.token_ids_present, pad_id=pad, special_ids={"pad": pad, "eos": eos, ...})
    model = create_student("vit_small", embed_dim=cache.embed_dim, image_size=cache.image_size, vocab=vocab)
    model.save_pretrained(run_dir / "student", processor=teacher_dir)
    model = TinySigLIP.from_pretrained(run_dir / "student")
    model.encode_images([...PIL...]); model.encode_texts(["a red square"])
"""

from .image_tower import create_image_tower
from .model import TinySigLIP, TinySigLIPEncoder, load_student
from .registry import (
    OVERRIDE_KEYS,
    StudentSpec,
    create_student,
    get_student_spec,
    list_students,
    register_student,
)
from .text import TextTower
from .vocab import TokenVocab

__all__ = [
    "OVERRIDE_KEYS",
    "StudentSpec",
    "TextTower",
    "TinySigLIP",
    "TinySigLIPEncoder",
    "TokenVocab",
    "create_image_tower",
    "create_student",
    "get_student_spec",
    "list_students",
    "load_student",
    "register_student",
]
