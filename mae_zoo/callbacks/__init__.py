from mae_zoo.callbacks.data_check import DataCheck
from mae_zoo.callbacks.last_checkpoint import LastCheckpoint
from mae_zoo.callbacks.online_probe import OnlineLinearProbe
from mae_zoo.callbacks.reconstructions import ReconstructionPictures
from mae_zoo.callbacks.rng_state import RNGState

__all__ = ["DataCheck", "LastCheckpoint", "OnlineLinearProbe", "RNGState", "ReconstructionPictures"]
