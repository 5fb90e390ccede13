"""da2-platform: search augmentation policies for top-down pose estimation and train P2Net with them."""

__version__ = "0.1.0"
