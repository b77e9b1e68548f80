"""unetdist: distributed UNet training for retinal vessel segmentation."""

__version__ = "0.1.0"
