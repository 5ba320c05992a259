"""`python -m jaxrepro.models [--image 32,32,3] [names…]`: parameter count and FLOPs per forward."""
import argparse

from jaxrepro.models import PRESETS, forward_flops, get_model, param_count


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=sorted(PRESETS))
    parser.add_argument("--image", default="32,32,3", help="H,W,C of the input")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.image.split(","))
    print(f"{'model':<14}{'params':>14}{'GFLOPs/forward':>16}   input {shape}")
    for name in args.names:
        model = get_model(name)
        print(f"{name:<14}{param_count(model, shape):>14,}{forward_flops(model, shape) / 1e9:>16.3f}")


if __name__ == "__main__":
    main()
