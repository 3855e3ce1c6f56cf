"""The generated labelled set is deterministic and pinned: a change of Pillow, FreeType or
the built-in font shows up here as a changed pixel hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from vlmserve.safety.dataset import CASES, LABELS_FILE, render_cases, write_dataset
from vlmserve.safety.policy import load_policy

# sha256 of mode, size and raw pixels per case (seed 0). PNG bytes are not pinned: they also
# depend on the zlib build, which changes nothing a model sees.
PIXEL_SHA256 = {
    "solid_black": "0b1c1010fa6791fc0a7aa9fbb57cfed3c33ee790e9f4b036cc72ed2d1a7fe938",
    "solid_white": "b45c48690d217f6da9362a13102e0477596448c769f98cffd239663f6de974b6",
    "noise": "780547b1fd83c0e2a6ef821bfe6a1316509526e39e1ffecdd43d4555b630b543",
    "gradient": "c941f294e1834992f432244d0e6f46cac824f4c379e59de6151631a11ebf45a1",
    "pixel_1x1": "fef044d10e3d9c1153a67c262910c493b5199bd9f88172bb57595983ff21426d",
    "checkerboard_1024": "315b863c95bea4b80e5c3351f4b62cdb4f397c8b93dce73a54d89ead8b16b5ab",
    "beer_en": "f0cd76743454f7f117fcb4209250d0b2edfd2dba53ac0157895e78e4d4c987b7",
    "harmless_sentence": "a3b89f376d08ca28c5013eb5d363aae04f9b54e4db121baa8974e73e57a00cc7",
    "masked_profanity": "b9164e88f6cb3b001e982f470d0f3942d7d8bc52070c07f58435bae4aa561cf2",
    "beer_es": "96f3a155537a7b18e26192e75b9d538a5ff7a91e8b7346e310394098ee0cf6bc",
    "beer_fr": "8dbef67228e72a54e01895abfa6dbbcc7c7d87e0b39266d45f12d8a585dfc48e",
    "beer_de": "6cc23232f2dec61d022bb87c4a8882878e0943a520e4c43f4eed7eae05d2f784",
    "quotes_newlines": "973ba7cc46fd1dfd54051e387bcd0d1f58c2420565c5fb99aa53aceda13d8622",
    "injection": "95100b0c05d49a66a115bc9eb579ffc328788b8ec7c646a80fcf3dd2c9e94385",
}


def _pixel_hash(image: Image.Image) -> str:
    header = f"{image.mode} {image.size[0]}x{image.size[1]}\n".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


def test_pixels_are_pinned() -> None:
    assert {case.name: _pixel_hash(image) for case, image in render_cases(0)} == PIXEL_SHA256


def test_seed_changes_only_the_noise() -> None:
    a, b = render_cases(0), render_cases(1)
    changed = {case.name for (case, x), (_, y) in zip(a, b) if x.tobytes() != y.tobytes()}
    assert changed == {"noise"}


def test_written_set(tmp_path: Path) -> None:
    labels = write_dataset(tmp_path / "one")
    again = write_dataset(tmp_path / "two")
    records = [json.loads(line) for line in labels.read_text().splitlines()]
    assert labels.name == LABELS_FILE and len(records) == len(CASES)
    classes = load_policy().class_names
    for record in records:
        assert record["label"] in classes
        png = (labels.parent / record["image"]).read_bytes()
        assert png == (again.parent / record["image"]).read_bytes()  # byte-identical runs
        with Image.open(labels.parent / record["image"]) as image:
            assert _pixel_hash(image) == PIXEL_SHA256[record["id"]]
    by_id = {r["id"]: r for r in records}
    assert by_id["injection"]["label"] == "alcohol"
    assert (
        by_id["beer_de"]["language"] == "de" and by_id["masked_profanity"]["label"] == "profanity"
    )
    assert Image.open(labels.parent / "checkerboard_1024.png").size == (1024, 1024)
    assert Image.open(labels.parent / "pixel_1x1.png").size == (1, 1)
