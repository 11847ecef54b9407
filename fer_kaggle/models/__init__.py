"""Layer 2: the networks, as training and serving both use them.

    backbones  our fer_* backbones in timm's registry, build_model, per-backbone settings
    tta        test-time views (flips, shifts, crops) and their averaged predictions
"""
