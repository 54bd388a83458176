"""The teacher: a SigLIP / SigLIP 2 checkpoint loaded through transformers, or the local-world one."""

from tinysiglip.teacher.hf import MAX_TEXT_LENGTH, Teacher, TeacherLoadError, load_teacher

__all__ = ["MAX_TEXT_LENGTH", "Teacher", "TeacherLoadError", "load_teacher", "train_local_teacher"]


def __getattr__(name: str):
    # Training pulls in the dataset and loss modules; import it only when asked for.
    if name == "train_local_teacher":
        from tinysiglip.teacher.local import train_local_teacher

        return train_local_teacher
    raise AttributeError(name)
