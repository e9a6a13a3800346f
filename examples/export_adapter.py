"""Copy a trained recycle adapter to another folder with its module weights cast to a smaller dtype.

    python examples/export_adapter.py TRAINED_ADAPTER_DIR TARGET_DIR --dtype float16
"""

from __future__ import annotations

import argparse

from recycle_hf import load_recycle_adapter
from recycle_hf.adapter import read_adapter_config
from recycle_hf.loading import DTYPES, load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter")
    parser.add_argument("target")
    parser.add_argument("--base", default="default")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    args = parser.parse_args()
    base, _ = load_base(args.base)
    model = load_recycle_adapter(base, args.adapter)
    model.recycle_module.to(DTYPES[args.dtype])
    base_name = read_adapter_config(args.adapter).base_model_name_or_path
    model.save_adapter(args.target, base_model_name_or_path=base_name)


if __name__ == "__main__":
    main()
