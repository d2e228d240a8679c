"""What a semtile package says about its model: the card's facts, its documentation page, its sample and cover."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semtile.errors import ModelError

__all__ = ["PAPERS", "card_facts", "documentation", "sample_scan", "write_cover"]

#: The papers each model kind follows (docs/science.md's bibliography); a DOI where the paper has one.
PAPERS = {
    "bundle": [{"text": "Hascoet T., Deng X., Tai K., Adachi Y., Nakamura S., Hayashi T., Sugiyama M., Arika Y., "
                        "Takiguchi T. Assisting human experts in the interpretation of their visual process: a case "
                        "study on assessing copper surface adhesive potency (the classifier (c, d, n, N), the "
                        "weak-label segmenter, the adhesive-area ratio)"}],
    "defect": [{"text": "Urquhart R. J., Woodley C., Karoni K., Elsner J., York D. Task 3 - Detect Defects in "
                        "Electron Microscopy Images. AI4SD ML Summer School Report 2, University of Southampton, "
                        "2022 (patch defect classification, autoencoder reconstruction as a defect signal)",
                "doi": "10.5258/SOTON/AI3SD0245"}],
}

_TRAINING_KEYS = ("data", "masks", "mode", "hypothesis", "config", "best_epoch", "threshold")


def _training(card: dict) -> dict:
    """The card's training record without the epoch-by-epoch history (its length kept) and file lists (counted)."""
    record = dict(card.get("training") or {})
    out = {k: record[k] for k in _TRAINING_KEYS if k in record}
    if "history" in record:
        out["epochs_run"] = len(record["history"])
        last = record["history"][-1] if record["history"] else {}
        out["final"] = {k: v for k, v in last.items() if k != "seconds"}
    if isinstance(record.get("split"), dict):
        out["split_sizes"] = {k: len(v) for k, v in record["split"].items()}
    return out


def card_facts(model, parts: dict, tile: int, halo: int, multiple: int, sample: str) -> dict:
    """Name, description, tags, version and the ``config.semtile`` entry of the package of ``model``."""
    from semtile import __version__
    from semtile.models.io import ModelBundle

    bundle = isinstance(model, ModelBundle)
    kind = "bundle" if bundle else model.arch.kind
    builtin = bundle and bool(model.builtin)
    name = ("semtile built-in adhesive segmenter and classifier" if builtin
            else f"semtile {'segmenter and classifier' if bundle else kind}")
    description = ("Segments adhesive (rough) copper surface in SEM scans and classifies the etching condition of "
                   "each tile (semtile's classifier + weak-label segmenter)" if bundle else
                   f"semtile {kind} for defects in SEM scans")
    config = {
        "format": "semtile-bioimageio/1", "kind": kind, "semtile_version": __version__,
        "tile": tile, "step": multiple, "halo": halo, "blend": "overlapping tiles blended (semtile's ramps)",
        "labels": list(parts["classifier"].labels) if bundle else [],
        "parts": {part_name: {"architecture": part.arch.to_dict(), "weights_sha256": part.sha256,
                              "training": _training(part.card),
                              **({"threshold": part.card["threshold"]} if part.card.get("threshold") else {})}
                  for part_name, part in parts.items()},
        "input": {"values": "gray 0..255 (semtile scales a scan by its sample type's range: 8-bit 0..255, "
                            "16-bit 0..65535)", "preprocessing": "gray / 255"},
        "papers": PAPERS["bundle" if bundle else "defect"],
        "sample": sample,
    }
    if builtin:
        config["caveat"] = model.caveat
    return {"name": name, "description": description, "version": "0.1.0",
            "tags": ["semtile", "sem", "electron-microscopy", "2d", "segmentation" if bundle else "anomaly-detection"],
            "papers": config["papers"], "config": config}


def documentation(facts: dict) -> str:
    """The package's README.md: what the model is, how semtile ran it, what it was trained on."""
    c = facts["config"]
    lines = [f"# {facts['name']}", "", facts["description"] + ".", "",
             "## Input and output", "",
             f"* input `raw`: {c['input']['values']}; preprocessing {c['input']['preprocessing']} "
             "(fixed_zero_mean_unit_variance, mean 0, std 255)",
             f"* tile: {c['tile']} pixels (any multiple of {c['step']} from the package's minimum), "
             f"halo {c['halo']} pixels on each side; {c['blend']}"]
    if c["labels"]:
        lines.append(f"* labels: {', '.join(map(str, c['labels']))}")
    lines += ["", "## Parts", ""]
    for name, part in c["parts"].items():
        lines.append(f"* {name}: architecture {part['architecture']}, weights sha256 {part['weights_sha256']}")
        t = part["training"]
        if t:
            lines.append(f"  training: data {t.get('data')}, mode {t.get('mode', 'n/a')}, "
                         f"hypothesis {t.get('hypothesis')}, config {t.get('config')}, best epoch "
                         f"{t.get('best_epoch')} of {t.get('epochs_run')}, split {t.get('split_sizes')}")
    if c.get("caveat"):
        lines += ["", "## Caveat", "", c["caveat"]]
    lines += ["", "## Papers", ""] + [f"* {p['text']}" + (f" (doi {p['doi']})" if p.get("doi") else "")
                                      for p in c["papers"]]
    lines += ["", "## Validation", "", "The test tensors are a tile of the sample scan and what semtile's own engine "
              "(torch-cpu, f32) gives for it; `semtile export` checks the package with bioimageio.spec, and "
              "`bioimageio test PACKAGE` (bioimageio.core) reproduces the test outputs from both weights formats."]
    lines += ["", "## Run it", "", "```", "semtile process SCANS --model THIS_PACKAGE.zip --out results.zarr", "```",
              "", f"Made by semtile {c['semtile_version']} (`semtile export MODEL --bioimageio OUT.zip`); "
              f"test tensors and cover from {c['sample']}.", ""]
    return "\n".join(lines)


def sample_scan(path: str | Path | None) -> tuple[np.ndarray, str]:
    """The sample's normalised valid area (gray in [0, 1], as semtile reads it) and its name; default: a synthetic
    etched-copper scan (seed 0, 512 x 512, the demo's generator)."""
    if path is None:
        from semtile.synth import synth_surface

        image, _, bar = synth_surface(np.random.default_rng(0), (512 + 64, 512), 0.5)
        valid = image[: image.shape[0] - bar] if bar else image
        return valid.astype(np.float32) / 255.0, "a synthetic etched-copper scan (semtile synth, seed 0)"
    from semtile.io.tiff import open_scan

    try:
        with open_scan(Path(path)) as scan:
            return np.ascontiguousarray(scan.valid().compute(), dtype=np.float32), Path(path).name
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the sample scan ({exc})") from exc


def write_cover(path: Path, gray: np.ndarray, result: np.ndarray | None) -> None:
    """A 2:1 PNG: the sample scan, and beside it its result (the mask in red over the scan, or the map)."""
    from PIL import Image

    side = 256
    left = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8)).resize((side, side)).convert("RGB")
    if result is None:
        right = left
    else:
        r = np.asarray(result, np.float32)
        r = (r - r.min()) / (r.max() - r.min()) if r.max() > r.min() else np.zeros_like(r)
        base = np.repeat((np.clip(gray, 0, 1) * 255)[..., None], 3, axis=2)
        red = np.zeros_like(base)
        red[..., 0] = 255
        blended = base * (1 - 0.6 * r[..., None]) + red * 0.6 * r[..., None]
        right = Image.fromarray(blended.astype(np.uint8)).resize((side, side))
    cover = Image.new("RGB", (2 * side, side))
    cover.paste(left, (0, 0))
    cover.paste(right, (side, 0))
    cover.save(path)
