"""`python -m jaxrepro.descriptors convert --torchscript FILE --out DIR [--arch NAME]`."""
import argparse

from jaxrepro.descriptors.convert import convert_torchscript
from jaxrepro.descriptors.sscd import ARCHS


def main():
    parser = argparse.ArgumentParser(description="SSCD weight conversion")
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="TorchScript SSCD file → Flax checkpoint directory")
    conv.add_argument("--torchscript", required=True)
    conv.add_argument("--out", required=True)
    conv.add_argument("--arch", choices=sorted(ARCHS), default=None, help="default: detected from the keys")
    args = parser.parse_args()
    arch = convert_torchscript(args.torchscript, args.out, args.arch)
    print(f"converted {args.torchscript} ({arch}) → {args.out}")


if __name__ == "__main__":
    main()
