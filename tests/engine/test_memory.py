"""Peak resident memory of serving the tiny model (the vLLM CPU peer uses ~2.7 GB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIMIT_BYTES = 1.5 * 1024**3

SCRIPT = """
import json, sys
from PIL import Image
from vlmserve.offline import LLM
from vlmserve.types import SamplingParams
llm = LLM(sys.argv[1])
image = Image.new("RGB", (448, 448), "red")
prompt = {"prompt": "<|vision_start|><|image_pad|><|vision_end|>Describe.",
          "multi_modal_data": {"image": [image]}}
llm.generate([prompt] * 16, SamplingParams(max_tokens=32, ignore_eos=True))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from a big
# pytest process would report the parent's size.
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(json.dumps({"peak_rss": int(status[0]) * 1024}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux VmHWM")
def test_peak_rss_of_the_tiny_model_stays_under_limit(tiny_qwen2_vl: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_qwen2_vl)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    peak = json.loads(run.stdout.strip().splitlines()[-1])["peak_rss"]
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 2**20:.0f} MiB"
