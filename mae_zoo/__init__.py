"""mae_zoo: masked autoencoders for image, video, audio, point-cloud and graph data."""

from mae_zoo.api import load
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import Layout, MAEOutput, Tokens

__version__ = "0.1.0"
__all__ = ["Layout", "MAEOutput", "MaskedAutoencoder", "Tokens", "__version__", "load"]
