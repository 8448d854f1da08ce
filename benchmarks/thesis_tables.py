"""Print the thesis's tables 5.1-5.4 (reconstruction, ML-VAE score, deblurring, loss ablation) from
`microdeblur evaluate` reports, with the thesis's own figures beside ours.

    python benchmarks/thesis_tables.py runs/q_test/metrics.json --train runs/q_val/metrics.json \
        --name manifold-1d=m1d --name manifold=manifold --name ml-vae=mlvae \
        --ablation "no cross-reconstruction=manifold_nocross" --ablation "no contrastive=manifold_nocont"

The positional reports (merged; one model may come from each) play the thesis's "test set", the
`--train` reports (optional, merged) its "training set" column.
`--name LABEL=MODEL` maps a thesis row to a model name of the reports (the weights file stem).
Deblurring follows the thesis protocol: the blur code of another identity's in-focus tile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Thesis tables 5.1-5.4: (SSIM, PSNR) on the test and training sets; ML-VAE score as
# (blur-code accuracy, identity-code accuracy, score).
THESIS_RECON = {"ml-vae": ((0.9101, 31.923), (0.9233, 32.279)), "manifold": ((0.9455, 37.927), (0.9462, 38.455)),
                "manifold-1d": ((0.9422, 36.560), (0.9444, 37.437)),
                "no cross-reconstruction": ((0.9439, 38.098), (0.9452, 38.323)),
                "no contrastive": ((0.9487, 38.914), (0.9486, 38.239))}
THESIS_DEBLUR = {"ml-vae": ((0.8629, 28.816), (0.8927, 29.801)), "manifold": ((0.8925, 31.062), (0.9095, 32.150)),
                 "manifold-1d": ((0.9179, 33.020), (0.9315, 34.492)),
                 "no cross-reconstruction": ((0.7724, 24.736), (0.8123, 25.406)),
                 "no contrastive": ((0.8722, 29.642), (0.8935, 30.563))}
THESIS_SCORE = {"ml-vae": (0.962, 0.995, 0.033), "manifold": (0.732, 0.955, 0.263), "manifold-1d": (0.007, 0.958, 0.951)}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("test", type=Path, nargs="+", help="metrics.json of held-out (test) evaluations")
    p.add_argument("--train", type=Path, action="append", default=[], help="metrics.json standing in for the training set")
    p.add_argument("--name", action="append", default=[], help="THESIS_ROW=MODEL (repeatable)")
    p.add_argument("--ablation", action="append", default=[], help="THESIS_ROW=MODEL for table 5.4 (repeatable)")
    p.add_argument("--baseline", default="manifold", help="thesis row that heads table 5.4")
    return p.parse_args()


def pairs(items: list[str]) -> dict[str, str]:
    """'a=b' strings -> {a: b}."""
    out = {}
    for item in items:
        label, sep, model = item.partition("=")
        if not sep:
            raise SystemExit(f"expected LABEL=MODEL, got {item!r}")
        out[label] = model
    return out


def merged(paths: list[Path]) -> dict[str, Any] | None:
    """The per-model sections of several metrics.json files, merged (later files win)."""
    if not paths:
        return None
    out: dict[str, Any] = {"reconstruction": {}, "deblurring": {}, "disentanglement": {}}
    for path in paths:
        m = json.loads(path.read_text())
        for key in out:
            out[key].update(m.get(key, {}))
    return out


def fmt(v: float | None, digits: int) -> str:
    """Number or an en dash."""
    return "–" if v is None else f"{v:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def recon(m: dict[str, Any] | None, model: str) -> list[str]:
    """SSIM and PSNR of the reconstruction D(E(x))."""
    r = (m or {}).get("reconstruction", {}).get(model, {})
    return [fmt(r.get("ssim"), 4), fmt(r.get("psnr"), 2)]


def deblur(m: dict[str, Any] | None, model: str) -> list[str]:
    """SSIM and PSNR of thesis-protocol deblurring (another identity's in-focus blur code), all tiles."""
    r = (m or {}).get("deblurring", {}).get(f"{model} (reference)", {}).get("overall", {})
    return [fmt(r.get("ssim"), 4), fmt(r.get("psnr"), 2)]


def thesis(values: tuple[tuple[float, float], tuple[float, float]] | None) -> list[str]:
    """Thesis SSIM/PSNR for the test and training sets."""
    if values is None:
        return ["–"] * 4
    (ts, tp), (rs, rp) = values
    return [f"{ts:.4f}", f"{tp:.2f}", f"{rs:.4f}", f"{rp:.2f}"]


def main() -> None:
    """Print the four tables as markdown."""
    args = parse_args()
    test, train = merged(args.test), merged(args.train)
    names, ablations = pairs(args.name), pairs(args.ablation)
    cols = ["SSIM test", "PSNR test", "SSIM train", "PSNR train", "thesis SSIM test", "thesis PSNR test",
            "thesis SSIM train", "thesis PSNR train"]

    print("Table 5.1: reconstruction D(E(x)) vs x\n")
    print(table(["model", *cols], [[label, *recon(test, m), *recon(train, m), *thesis(THESIS_RECON.get(label))]
                                   for label, m in names.items()]))
    print("\nTable 5.2: identity accuracy from blur and identity codes, ML-VAE score (test report)\n")
    rows = []
    for label, m in names.items():
        d = test["disentanglement"].get(m, {})
        t = THESIS_SCORE.get(label)
        rows.append([label, fmt(d.get("acc_blur"), 3), fmt(d.get("acc_identity"), 3), fmt(d.get("score"), 3),
                     fmt(d.get("chance"), 3), *([f"{v:.3f}" for v in t] if t else ["–"] * 3)])
    print(table(["model", "blur-code acc.", "identity-code acc.", "ML-VAE score", "chance",
                 "thesis blur acc.", "thesis identity acc.", "thesis score"], rows))
    print("\nTable 5.3: deblurring, thesis protocol (blur code of another identity's in-focus tile), all |Δz|\n")
    print(table(["model", *cols], [[label, *deblur(test, m), *deblur(train, m), *thesis(THESIS_DEBLUR.get(label))]
                                   for label, m in names.items()]))
    if ablations:
        print("\nTable 5.4: loss ablation (reconstruction | deblurring; test report, then thesis test set)\n")
        rows = []
        for label, m in {args.baseline: names.get(args.baseline, args.baseline), **ablations}.items():
            tr, td = THESIS_RECON.get(label), THESIS_DEBLUR.get(label)
            rows.append([label, *recon(test, m), *deblur(test, m),
                         *(thesis(tr)[:2] if tr else ["–"] * 2), *(thesis(td)[:2] if td else ["–"] * 2)])
        print(table(["model", "recon SSIM", "recon PSNR", "deblur SSIM", "deblur PSNR", "thesis recon SSIM",
                     "thesis recon PSNR", "thesis deblur SSIM", "thesis deblur PSNR"], rows))


if __name__ == "__main__":
    main()
