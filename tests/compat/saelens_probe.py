"""Run by the sae-lens venv (``make compat``), not by pytest: load SAE directories with the real
``sae_lens.SAE.load_from_disk`` and compare its codes and reconstructions with ours.

Usage: ``saelens_probe.py DIR X.npy Z.npy XHAT.npy`` (one SAE); prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import torch


def main(sae_dir: str, x_path: str, z_path: str, xhat_path: str) -> None:
    warnings.filterwarnings("ignore")
    import sae_lens
    from sae_lens import SAE

    sae = SAE.load_from_disk(sae_dir, device="cpu")
    x = torch.from_numpy(np.load(x_path))
    z_ours, xhat_ours = np.load(z_path), np.load(xhat_path)
    with torch.no_grad():
        z = sae.encode(x)
        z = (z.to_dense() if z.is_sparse else z).numpy()
        xhat = sae.decode(torch.from_numpy(z)).numpy()
    out = {
        "sae_lens": sae_lens.__version__,
        "class": type(sae).__name__,
        "architecture": sae.cfg.architecture(),
        "max_dz": float(np.abs(z - z_ours).max()),
        "max_z": float(np.abs(z_ours).max()),
        "support_differs": int(((z > 0) != (z_ours > 0)).sum()),
        "max_dxhat": float(np.abs(xhat - xhat_ours).max()),
        "max_xhat": float(np.abs(xhat_ours).max()),
        "l0": float((z > 0).sum(1).mean()),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:5])
