from mae_zoo.callbacks.last_checkpoint import LastCheckpoint
from mae_zoo.callbacks.online_probe import OnlineLinearProbe
from mae_zoo.callbacks.reconstructions import ReconstructionPictures

__all__ = ["LastCheckpoint", "OnlineLinearProbe", "ReconstructionPictures"]
