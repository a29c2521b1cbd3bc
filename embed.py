"""The frozen backbone's 512-d features of a folder's photos as the classifier sees its test images, for your own
analysis: OUT (.npy, N x 512 float32), OUT with .csv (a row each: its .npy row, the file, its class if any).

    python embed.py data/PetImages                                  # runs/simsiam/siam.pt -> runs/embeddings.npy
    python embed.py photos/ --checkpoint runs/mine/siam.pt --out photos.npy   # loose photos: no classes
    python embed.py photos/ --init imagenet --out photos-imagenet.npy         # torchvision's ImageNet weights

The photos are decoded once into the cache, as for training; a file that cannot be decoded is skipped and listed."""
import argparse
import csv
from pathlib import Path

import numpy as np
import torch

import dataset
import evaluate
import model
import runs

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="photos: class folders, Kaggle's flat layout, or loose photos")
    parser.add_argument("--out", type=Path, default=Path("runs/embeddings.npy"),
                        help="the .npy file, the .csv beside it (default: %(default)s)")
    group = parser.add_argument_group("backbone and cache")
    evaluate.add_backbone_arguments(group)
    runs.add_cache_arguments(group)
    runs.add_run_arguments(group)
    parser.set_defaults(demo=False)
    args = parser.parse_args(argv)
    if args.out.suffix != ".npy":
        parser.error(f"--out {args.out}: name a .npy file")
    return args

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    runs.writable_folder(args.out.parent, "--out")
    runtime, chosen = runs.make_runtime(args.device, args.precision), evaluate.backbone_source(args)
    data = dataset.load_images(args.folder, chosen.cache_size, args.cache_dir, workers=args.workers, min_classes=1,
                               unlabelled=None)
    print(dataset.describe(data))
    torch.manual_seed(args.seed)  # a random-init backbone: the classifier's of the same --seed
    backbone = chosen.load(model.resnet18_backbone()).to(runtime.device, memory_format=runtime.memory_format)
    features = evaluate.embed(backbone, dataset.cache_on_device(data.images, runtime.device),
                              torch.arange(len(data.files)), chosen.image_size, runtime).cpu().numpy()
    np.save(args.out, features)
    with open(args.out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["row", "file", "class"], *(
            [row, dataset.shown(name), data.classes[label] if data.classes else ""]
            for row, (name, label) in enumerate(zip(data.files, data.labels.tolist())))])
    print(f"wrote {args.out} ({len(features):,} x {features.shape[1]} float32: the {chosen.name} backbone at "
          f"{chosen.image_size} px) and {args.out.with_suffix('.csv')}")

if __name__ == "__main__":
    main()
