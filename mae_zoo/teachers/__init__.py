"""Teachers: frozen networks whose features replace the reconstruction target (``conf/teacher``)."""

from mae_zoo.teachers.base import Teacher

__all__ = ["Teacher"]
