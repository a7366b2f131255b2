"""Filters for the GPU verification (tasks/verify.yml).

How an inventory model name is compared with what nvidia-smi prints
-------------------------------------------------------------------
The inventory names a GPU the way it is bought (``H100-SXM5-80GB``); nvidia-smi prints the
marketing name (``NVIDIA H100 80GB HBM3``), and NVIDIA is not consistent about which parts
it prints (``NVIDIA A100-SXM4-80GB``, ``NVIDIA H100 PCIe``, ``NVIDIA H100 NVL``). So:

1. If ``bootgate_gpu_smi_name`` is set, the nvidia-smi name must equal it (case and
   surrounding blanks ignored). Use it when the token rule below is too loose.
2. Otherwise both names are lower-cased and split into tokens of letters and digits. The
   GPU family, the inventory model's first token (``h100``), must be a token of the
   nvidia-smi name (so ``h100`` never matches ``h200``, ``b200`` never ``gb200``), and
   when both names carry a memory size (``80gb``) the sizes must be equal (an
   ``A100-SXM4-40GB`` is not an ``A100-SXM4-80GB``). The form factor (SXM5, PCIe, NVL) is
   not compared: nvidia-smi often leaves it out.

>>> bootgate_gpu_name_matches("NVIDIA H100 80GB HBM3", "H100-SXM5-80GB")
True
>>> bootgate_gpu_name_matches("NVIDIA H100 PCIe", "H100-PCIE-80GB")
True
>>> bootgate_gpu_name_matches("NVIDIA H200", "H100-SXM5-80GB")
False
>>> bootgate_gpu_name_matches("NVIDIA A100-SXM4-40GB", "A100-SXM4-80GB")
False
>>> bootgate_gpu_name_matches("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB")
True
>>> bootgate_gpu_name_matches("NVIDIA GB200", "B200")
False
>>> bootgate_gpu_name_matches("NVIDIA B200", "B200-SXM6-180GB")
True
>>> bootgate_gpu_name_matches("nvidia h100 80gb hbm3 ", "H100-SXM5-80GB", "NVIDIA H100 80GB HBM3")
True
>>> bootgate_gpu_name_matches("NVIDIA H100 PCIe", "H100-SXM5-80GB", "NVIDIA H100 80GB HBM3")
False
>>> bootgate_gpu_name_matches("NVIDIA H100 80GB HBM3", "")
False
>>> bootgate_count_summary(["NVIDIA H100 80GB HBM3"] * 7 + ["NVIDIA A100-SXM4-80GB"])
'7 × NVIDIA H100 80GB HBM3, 1 × NVIDIA A100-SXM4-80GB'
>>> bootgate_count_summary([])
'no GPU'
"""

import re

_TOKEN = re.compile(r"[a-z0-9]+")
_MEMORY = re.compile(r"^[0-9]+gb$")


def _tokens(name):
    return _TOKEN.findall(str(name).lower())


def bootgate_gpu_name_matches(smi_name, model, smi_name_override=""):
    """Whether one nvidia-smi GPU name is the inventory's model (rules in the module doc)."""
    if smi_name_override:
        return str(smi_name).strip().lower() == str(smi_name_override).strip().lower()
    want = _tokens(model)
    have = _tokens(smi_name)
    if not want or want[0] not in have:
        return False
    want_mem = {t for t in want if _MEMORY.match(t)}
    have_mem = {t for t in have if _MEMORY.match(t)}
    return not (want_mem and have_mem) or bool(want_mem & have_mem)


def bootgate_count_summary(names, nothing="no GPU"):
    """`N × name` for each distinct name, in order of first appearance."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    if not counts:
        return nothing
    return ", ".join(f"{n} × {name}" for name, n in counts.items())


class FilterModule:
    def filters(self):
        return {
            "bootgate_gpu_name_matches": bootgate_gpu_name_matches,
            "bootgate_count_summary": bootgate_count_summary,
        }
