"""Image descriptors behind one interface: embed(images) → features, similarity(a, b) → [A, B].

Higher similarity means more alike. Pixel descriptors live in `pixel.py`; the name is the
registry key (`get_descriptor("pixel_cosine")`).
"""
from jaxrepro.descriptors.pixel import PixelCosine, PixelL2

DESCRIPTORS = {"pixel_cosine": PixelCosine, "pixel_l2": PixelL2}


def get_descriptor(name, **kwargs):
    """Descriptor instance by name."""
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; allowed: {', '.join(sorted(DESCRIPTORS))}")
    return DESCRIPTORS[name](**kwargs)
