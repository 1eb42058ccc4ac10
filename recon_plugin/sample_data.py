"""Where the shipped data are: model bundles and protocols (package data), and the checkout's sample data.

The model bundles (``sample_data/weights/<bundle>``) and the protocols (``protocols/*.xml``) ship inside the
package as ``recon_plugin/weights`` and ``recon_plugin/protocols`` (pyproject.toml maps them), so a wheel
install finds them with :mod:`importlib.resources`; a checkout or an editable install (``pip install -e .``)
uses the checkout's folders. The Colin27 T1 axial slices (BSD-3-Clause, see sample_data/README.md) and the
raw sample files come with a checkout only.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np

from .errors import InvalidInputError

#: The checkout this module sits in (for an installed wheel: the site-packages folder, where no data are).
_CHECKOUT = Path(__file__).resolve().parents[1]


def packaged_dir(name: str, checkout: Path) -> Path:
    """Folder ``name`` of recon_plugin's package data when the package is installed from a wheel
    (``importlib.resources``), else ``checkout``: a checkout or editable install keeps its data in place."""
    root = importlib.resources.files(__package__).joinpath(name)
    if isinstance(root, Path) and root.is_dir():
        return root
    return checkout


#: The checkout's sample data (Colin27 slices, raw files): absent from a wheel install.
SAMPLE_DIR = _CHECKOUT / "sample_data"
COLIN_FILE = SAMPLE_DIR / "colin27_t1_axial.npz"
#: Why the sample data may be missing (appended to the not-found errors).
CHECKOUT_ONLY = (
    ": the Colin27 slices and the raw sample files come with a checkout of the project (git clone), not with "
    "the installed package; run this command from a checkout"
)
#: The shipped model bundles: ``recon_plugin/weights`` in a wheel install, ``sample_data/weights`` in a checkout.
WEIGHTS_DIR = packaged_dir("weights", SAMPLE_DIR / "weights")
#: The shipped Gadgetron protocols: ``recon_plugin/protocols`` in a wheel install, ``protocols`` in a checkout.
PROTOCOLS_DIR = packaged_dir("protocols", _CHECKOUT / "protocols")
#: The shipped default for multi-coil slices (docs/model_study.md): 10x3x32 with cg data consistency and one
#: proximal per copy (independent weights), the step-422 bundle of the campaign campaigns/cg_10x3x32i_mc_contrast3
#: (its best real-data validation): the three-block default of 2026-12-06 (``DEEP_BUNDLE``) trained on in three
#: stages (600 + 900 + 422 steps) with a random contrast given to half, then 70 %, then 90 % of the training images
#: (scanner-like data, 1-32 coils, both SIAT sets, the real scans' smooth image phase).
#: The gadgets, ``recon-plugin demo``, ``recon-plugin bench`` and ``recon-train eval`` load it.
DEFAULT_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x3x32i_mc_contrast3"
#: The default on 2026-12-07 before the third contrast stage (campaigns/cg_10x3x32i_mc_contrast2, step 900).
CONTRAST2_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x3x32i_mc_contrast2"
#: The default from 2026-12-06 to 2026-12-07 (the same architecture, before the contrast stages): the two-block
#: default (``TWO_BLOCK_BUNDLE``) deepened to three residual blocks per copy and trained 1200 steps
#: (campaigns/cg_10x3x32i_mc_deep).
DEEP_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x3x32i_mc_deep"
#: The default on 2026-12-06 before the third block (two residual blocks per copy, 0.8x the time a slice): the ninth
#: phase stage (``PHASE_BUNDLE``) deepened to two blocks and trained in two stages (campaigns/cg_10x2x32i_mc_deep,
#: then _deep2 with the new blocks at 20x the lr).
TWO_BLOCK_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x2x32i_mc_deep2"
#: The default until 2026-12-06 (one residual block per copy): the untied stage trained on with the real scans'
#: smooth image phase in nine stages (campaigns/cg_10x1x32i_mc_phase9); the deeper defaults' starting point.
PHASE_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x1x32i_mc_phase9"
#: The default before the phase stage (campaigns/cg_10x1x32i_mc_untied, step 600); the LSGAN bundle's base.
UNTIED_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x1x32i_mc"
#: The campaign's stage 1 (shared weights, campaigns/cg_10x1x32_mc, step 398): the default before the untied stage.
CAMPAIGN_STAGE1_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x1x32_mc"
#: The untied stage fine-tuned with the paper's LSGAN term (campaigns/cg_10x1x32i_mc_gan); its card compares them.
GAN_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x1x32i_mc_gan"
#: The default before the campaign (1000 steps on SIAT slices 1-140, 4-12 coils): kept for comparison.
PREVIOUS_MULTICOIL_BUNDLE = WEIGHTS_DIR / "rgancs_cg_10x1x32_multicoil"
#: The multi-coil bundle for each ``model`` property value: ``accurate`` (the three-block default) and ``fast`` (the
#: one-block bundle, about half the time a slice: on an AVX2-only CPU the three-block one ran 10.2x faster than BART
#: CS-WV and this one 18.3x, ``recon-plugin bench --quick``, docs/performance.md).
MODEL_BUNDLES = {"accurate": DEFAULT_BUNDLE, "fast": PHASE_BUNDLE}
#: Default multi-coil bundle per device class (``model`` = ``auto``): a CUDA GPU or a CPU with native bf16
#: (``cpu_bf16``: AVX512-BF16 or AMX) runs the accurate one within the speed budget (>= 15x BART CS-WV per 256x256
#: 8-coil slice); any other CPU (``cpu``: fp32 convolutions) the fast one. No GPU-trained model beats them yet.
DEFAULT_BUNDLES = {"cuda": DEFAULT_BUNDLE, "cpu_bf16": DEFAULT_BUNDLE, "cpu": PHASE_BUNDLE}
#: The device classes of :data:`DEFAULT_BUNDLES` in words (``recon-plugin protocols list``).
DEVICE_CLASSES = {"cuda": "a GPU", "cpu_bf16": "a CPU with native bf16", "cpu": "other CPUs"}
#: Demoted (loses to CS everywhere): a small single-coil model kept as a fast fixture for tests and examples.
DEMO_BUNDLE = WEIGHTS_DIR / "rgancs_demo_cpu"
#: The paper's 10x1x128 architecture (shared weights) trained on single-coil SIAT slices (600 steps of 4 crops,
#: ``rgancs_10x1x128_siat``), then 1200 more steps with half of its images phased (campaigns/siat1_10x1x128,
#: ``rgancs_10x1x128_siat2``), 1200 more from a restarted cosine (campaigns/siat1_10x1x128_2,
#: ``rgancs_10x1x128_siat3``), 800 more at a lower learning rate (campaigns/siat1_10x1x128_3,
#: ``rgancs_10x1x128_siat4``) and 700 more on whole 256x256 slices instead of 128x128 crops
#: (campaigns/siat1_10x1x128_4), run with ``flip_average`` = 2: the single-coil default on 2026-12-06 before the
#: next stage, kept for comparison (the earlier four are packaged too).
PREVIOUS_SINGLE_COIL_BUNDLE = WEIGHTS_DIR / "rgancs_10x1x128_siat5"
#: That model trained 700 more steps on whole slices from a restarted cosine (campaigns/siat1_10x1x128_5), run with
#: ``flip_average`` = 2 (each copy's G averaged with its left-right mirror): the single-coil default.
FULL_BUNDLE = WEIGHTS_DIR / "rgancs_10x1x128_siat6"
MATRIX = (208, 176)
#: The bundle single-coil slices get when a gadget has no ``weights`` property (``single_coil_weights``): the
#: best measured single-coil model, which beats the multi-coil default on single-coil data (its model card).
DEFAULT_SINGLE_COIL_BUNDLE = FULL_BUNDLE
#: Slices kept out of training: the demo and the demo bundle's validation use them.
HELD_OUT = (4, 11, 18, 25)


def load_colin_slices(path: str | Path | None = None, matrix: tuple[int, int] = MATRIX) -> np.ndarray:
    """Axial slices [n, ny, nx] as float32 in [0, 1], centre-cropped to ``matrix``."""
    path = Path(path or COLIN_FILE)
    if not path.is_file():
        raise InvalidInputError(f"sample data {path} not found" + (CHECKOUT_ONLY if path == COLIN_FILE else ""))
    slices = np.load(path)["slices"].astype(np.float32) / 255.0
    ny, nx = slices.shape[1:]
    oy, ox = (ny - matrix[0]) // 2, (nx - matrix[1]) // 2
    if oy < 0 or ox < 0:
        raise InvalidInputError(f"matrix {matrix} is larger than the sample slices {ny}x{nx}")
    return np.ascontiguousarray(slices[:, oy : oy + matrix[0], ox : ox + matrix[1]])


def split_held_out(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training slices, held-out slices)."""
    held = np.zeros(len(slices), bool)
    held[list(HELD_OUT)] = True
    return slices[~held], slices[held]
