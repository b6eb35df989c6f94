"""A picture of the photograph folders: each folder's first normal test image and one image of each
defect kind, below them the same with the mask's outline in red.

    python benchmarks/photo_folders_figure.py data/example-photos docs/photo_folders.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/NAME.py`: the repository's root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _main(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from anomalymap_helpers.errors import DataError
    from anomalymap_helpers.pipeline.data.photos import DEFECTS, SURFACES

    root, zoom = Path(args.folders), args.zoom
    folders = [s for s in SURFACES if (root / s).is_dir()]
    if not folders:
        raise DataError(f"no photograph folders ({', '.join(SURFACES)}) in {root}: make them with "
                        "python -m anomalymap_helpers example-folder --kind photos")
    name = f"{args.index:03d}.png"
    side = Image.open(root / folders[0] / "test" / "good" / name).size[0] * zoom
    cols = ["good", *DEFECTS]
    top = 14
    sheet = Image.new("RGB", (len(cols) * side, top + 2 * len(folders) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for c, kind in enumerate(cols):
        draw.text((c * side + 3, 1), kind, fill="black")
    for r, folder in enumerate(folders):
        for c, kind in enumerate(cols):
            a = np.asarray(Image.open(root / folder / "test" / kind / name).convert("RGB")).copy()
            big = Image.fromarray(a).resize((side, side), Image.NEAREST)
            sheet.paste(big, (c * side, top + 2 * r * side))
            if kind != "good":
                mask = np.asarray(Image.open(root / folder / "ground_truth" / kind / name.replace(".png", "_mask.png"))) > 0
                a[mask & ~ndimage.binary_erosion(mask)] = (255, 0, 0)
            sheet.paste(Image.fromarray(a).resize((side, side), Image.NEAREST), (c * side, top + (2 * r + 1) * side))
        draw.text((3, top + 2 * r * side + 2), folder, fill="yellow")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=85) if Path(args.out).suffix.lower() in (".jpg", ".jpeg") else sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    from benchmarks._entry import run

    parser = argparse.ArgumentParser(prog="python benchmarks/photo_folders_figure.py", description=__doc__.splitlines()[0])
    parser.add_argument("folders", help="where example-folder --kind photos wrote the folders")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--index", type=int, default=1, help="which image of each kind (default 1)")
    parser.add_argument("--zoom", type=int, default=2)
    return run(parser, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
