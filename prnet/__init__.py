"""PRNet: Prototypical Residual Networks for Anomaly Detection and Localization (Zhang et al., CVPR 2023).

Scoring images with a trained checkpoint (see prnet.inference):

    import prnet
    detector = prnet.load_detector("outputs/demo/demo/last.pt")
    result = detector.predict("part.png")  # a path, a PIL image, a numpy array, or a list of them
    print(result.score, result.anomalous, result.anomaly_map.shape)
"""
__version__ = "0.2.0"
__all__ = ["Detector", "Prediction", "load_detector"]


def __getattr__(name: str):
    # the API is imported on first use, so `import prnet.config` stays light
    if name in __all__:
        from prnet import inference
        return getattr(inference, name)
    raise AttributeError(f"module 'prnet' has no attribute {name!r}")
