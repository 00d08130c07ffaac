"""PRNet: Prototypical Residual Networks for Anomaly Detection and Localization (Zhang et al., CVPR 2023)."""
__version__ = "0.1.0"
