"""A tiny zoo on disk: an untrained U-Net and SegFormer at 32 px with small TopK SAEs, and two
cohorts of 3 small BraTS-2023 case folders each (``ssa`` cases carry a bright FLAIR blob)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

SHAPE = (24, 24, 6)


def write_case(folder: Path, case_id: str, rng: np.random.Generator, blob: float) -> None:
    folder.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    brain = np.zeros(SHAPE, dtype=bool)
    brain[3:21, 3:21, :] = True
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[8:14, 8:14, 1:5] = 2
    for i, mod in enumerate(("t1n", "t1c", "t2w", "t2f")):
        img = (rng.uniform(0.5, 1.0, SHAPE) + 0.2 * i) * brain
        if mod == "t2f":
            img[label == 2] = blob
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), folder / f"{case_id}-{mod}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{case_id}-seg.nii.gz")


def build_tiny_zoo(root: Path) -> tuple[Path, Path]:
    """Returns ``(zoo_dir, data_dir)``."""
    from medseglens_core.models import build_model
    from medseglens_core.models.card import save_model
    from medseglens_core.sae.base import SAEConfig, build_sae
    from medseglens_core.sae.io import save_sae

    zoo, data = root / "zoo", root / "data"
    torch.manual_seed(0)
    models = {
        "unet-tiny": build_model(
            "unet", input_size=32, channels=(8, 16, 32), strides=(2, 2), num_res_units=1
        ),
        "segformer-tiny": build_model("segformer", input_size=32),
    }
    for mid, model in models.items():
        model.eval()
        save_model(model, {"id": mid, "training_cohorts": ["adult"]}, zoo / "models" / mid)
        with torch.no_grad():
            d_in = model.run_prefix(torch.zeros(1, 4, 32, 32), model.default_hook).h.shape[1]
        sae = build_sae(SAEConfig(arch="topk", d_in=d_in, d_sae=24, k=4))
        save_sae(
            sae,
            zoo / "saes" / f"{mid}-sae",
            {"id": f"{mid}-sae", "model_id": mid, "hook": model.default_hook},
        )
    rng = np.random.default_rng(0)
    for cohort, blob in (("adult", 1.0), ("ssa", 3.0)):
        for i in range(3):
            cid = f"{cohort}-{i:03d}"
            write_case(data / cohort / cid, cid, rng, blob)
    return zoo, data
