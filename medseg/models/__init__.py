"""Networks, checkpoints and the bundled lung-nodule model."""

from medseg.models.checkpoint import BUNDLED_MODEL, load_checkpoint_dict, load_model, save_checkpoint
from medseg.models.network import build_network

__all__ = ["BUNDLED_MODEL", "build_network", "load_checkpoint_dict", "load_model", "save_checkpoint"]
