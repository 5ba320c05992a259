"""Image descriptors behind one interface: embed(images) → features, similarity(a, b) → [A, B].

Higher similarity means more alike. Pixel descriptors live in `pixel.py`; the name is the
registry key (`get_descriptor("pixel_cosine")`).
"""
from jaxrepro.descriptors.pixel import PixelCosine, PixelL2

DESCRIPTORS = {"pixel_cosine": PixelCosine, "pixel_l2": PixelL2, "sscd": None}


def get_descriptor(name, **kwargs):
    """Descriptor instance by name; "sscd" needs checkpoint=<directory written by the converter>."""
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; allowed: {', '.join(sorted(DESCRIPTORS))}")
    if name == "sscd":
        from jaxrepro.descriptors.sscd import SSCDDescriptor
        if "checkpoint" not in kwargs:
            raise ValueError("descriptor 'sscd' needs checkpoint=<directory of a converted SSCD model>")
        return SSCDDescriptor(**kwargs)
    return DESCRIPTORS[name](**kwargs)
