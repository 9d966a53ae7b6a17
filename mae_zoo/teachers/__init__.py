"""Teachers (``conf/teacher``): frozen networks read by the distillation objectives, or whose features
replace the reconstruction target when no ``distill`` is configured."""

from mae_zoo.teachers.base import Teacher
from mae_zoo.teachers.foreign import HFTeacher, TimmTeacher
from mae_zoo.teachers.model import CheckpointTeacher, EMATeacher, ModelTeacher

__all__ = ["CheckpointTeacher", "EMATeacher", "HFTeacher", "ModelTeacher", "Teacher", "TimmTeacher"]
