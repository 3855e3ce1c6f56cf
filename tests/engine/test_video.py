"""Video through the whole engine against transformers, on a clip made here, encoded as MP4
with PyAV and decoded by `decode_video` as the server would.

transformers' video processor needs torchvision, which is not installed: its inputs come
from our `process_video` (proven equal to the reference per frame in tests/multimodal), and
the engine must then match transformers' model token for token, with Qwen2.5-VL's temporal
spacing (`second_per_grid_ts`) taken from the sampling rate. Also: images and videos mixed
in one prompt, chunked prefill, a video named by UUID only, limits and bad video input.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from tests.engine.test_parity import GREEDY, HF_CLASSES, PAD, assert_matches, chat, hf_greedy
from tests.models.test_parity import make_image
from vlmserve.config import MediaConfig
from vlmserve.engine.inputs import InputError
from vlmserve.multimodal.processor import load_image_processor_config, process_video
from vlmserve.multimodal.video import decode_video
from vlmserve.offline import LLM

VPAD = "<|vision_start|><|video_pad|><|vision_end|>"
# 3 samples a second of a 12 fps clip: 2/3 s per temporal patch of 2 frames, so Qwen2.5-VL's
# temporal positions advance by a fraction (tokens_per_second 2 -> 4/3) and get truncated.
FPS = 3.0
# (text, media in prompt order): ("v", seed) a video, ("i", (w, h)) an image.
PROMPTS: list[tuple[str, list[tuple[str, Any]]]] = [
    (f"{VPAD}What happens in this clip?", [("v", 1)]),
    (f"First {PAD} then {VPAD} and {PAD}.", [("i", (56, 56)), ("v", 2), ("i", (84, 56))]),
    (f"{VPAD} versus {VPAD}", [("v", 3), ("v", 1)]),
]


def mp4_clip(seed: int, seconds: float = 1.5, rate: int = 12) -> bytes:
    """A moving gradient with noise, 56x84 pixels, encoded as MPEG-4 in MP4."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 56, 84, "yuv420p"
        for index in range(int(seconds * rate)):
            frame = np.roll(np.asarray(make_image(56, 84, seed)), 4 * index, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def clip_frames(seed: int) -> list[Image.Image]:
    return decode_video(mp4_clip(seed), 0, MediaConfig(video_fps=FPS))


def media(i: int) -> tuple[list[Image.Image], list[list[Image.Image]]]:
    """Prompt i's images and videos, each list in prompt order."""
    images: list[Image.Image] = []
    videos: list[list[Image.Image]] = []
    for j, (kind, spec) in enumerate(PROMPTS[i][1]):
        if kind == "i":
            images.append(make_image(*spec, seed=10 * i + j))
        else:
            videos.append(clip_frames(spec))
    return images, videos


def engine_prompt(i: int, uuids: bool = False) -> dict[str, Any]:
    images, videos = media(i)
    prompt: dict[str, Any] = {
        "prompt": chat(PROMPTS[i][0]),
        "multi_modal_data": {"image": images, "video": [{"frames": v, "fps": FPS} for v in videos]},
    }
    if uuids:
        prompt["multi_modal_uuids"] = {
            "image": [f"img-{i}-{j}" for j in range(len(images))],
            "video": [f"vid-{i}-{j}" for j in range(len(videos))],
        }
    return prompt


@pytest.fixture(scope="module")
def reference(arch: str, folder: Path) -> list[tuple[list[int], torch.Tensor]]:
    """transformers' greedy tokens and log-softmaxed logits per step, per prompt."""
    hf = HF_CLASSES[arch].from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    config = load_image_processor_config(folder)
    llm = LLM(str(folder), dtype="float32")
    results = []
    for i in range(len(PROMPTS)):
        ids = llm.engine.process_input(engine_prompt(i)).token_ids
        images, videos = media(i)
        kwargs: dict[str, Any] = {}
        if images:
            out = image_processor(images, return_tensors="pt")
            kwargs = {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
        processed = [process_video(v, config) for v in videos]
        kwargs["pixel_values_videos"] = torch.cat([pixels for pixels, _ in processed])
        kwargs["video_grid_thw"] = torch.tensor([grid for _, grid in processed])
        if arch == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor(
                [config.temporal_patch_size / FPS] * len(videos)
            )
        results.append(hf_greedy(hf, ids, llm.engine.model_config, **kwargs))
    return results


def test_videos_match_transformers_alone_and_batched(folder: Path, reference: list[Any]) -> None:
    llm = LLM(str(folder), dtype="float32")
    assert_matches([llm.generate(engine_prompt(i), GREEDY)[0] for i in range(3)], reference)
    # All in one batch, prompts split into chunks that cut through the videos' rows.
    chunked = LLM(str(folder), dtype="float32", max_num_batched_tokens=24, block_size=4)
    assert_matches(chunked.generate([engine_prompt(i) for i in range(3)], GREEDY), reference)


def test_items_are_videos_in_prompt_order(folder: Path) -> None:
    llm = LLM(str(folder), dtype="float32")
    items = llm.engine.process_input(engine_prompt(1)).mm_items
    assert [item.modality for item in items] == ["image", "video", "image"]
    assert items[0].offset < items[1].offset < items[2].offset
    t, h, w = items[1].grid_thw
    assert t == 3 and items[1].length == t * h * w // 4  # 5 frames at 3 fps, padded to 6
    assert items[1].seconds_per_grid == pytest.approx(2 / FPS)


def test_video_by_uuid_only_serves_identical_output(folder: Path, reference: list[Any]) -> None:
    llm = LLM(str(folder), dtype="float32")
    first = llm.generate([engine_prompt(i, uuids=True) for i in range(3)], GREEDY)
    by_uuid = []
    for i in range(3):
        prompt = engine_prompt(i, uuids=True)
        data = prompt["multi_modal_data"]
        prompt["multi_modal_data"] = {m: [None] * len(data[m]) for m in data}
        by_uuid.append(prompt)
    misses = llm.engine.mm_cache.misses
    second = llm.generate(by_uuid, GREEDY)
    assert_matches(first, reference)
    assert_matches(second, reference)  # the sampling rate came back from the cache too
    assert llm.engine.mm_cache.misses == misses


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # the template's default


def test_chat_with_a_video_url_equals_generate(folder: Path) -> None:
    llm = LLM(str(folder), dtype="float32", media_config=MediaConfig(video_fps=FPS))
    url = "data:video/mp4;base64," + base64.b64encode(mp4_clip(1)).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "Hi"}]
    out = llm.chat([{"role": "user", "content": content}], GREEDY)[0]
    expected = llm.generate(
        {
            "prompt": SYSTEM + chat(f"{VPAD}Hi"),
            "multi_modal_data": {"video": {"frames": clip_frames(1), "fps": FPS}},
        },
        GREEDY,
    )[0]
    assert out.prompt_token_ids == expected.prompt_token_ids
    assert out.outputs[0].token_ids == expected.outputs[0].token_ids


@pytest.fixture(scope="module")
def small(tiny_qwen2_vl: Path) -> LLM:
    return LLM(str(tiny_qwen2_vl), limit_mm_per_prompt={"image": 2, "video": 1})


FRAMES = [make_image(56, 56, seed=i) for i in range(2)]


@pytest.mark.parametrize(
    ("text", "data", "uuids", "message"),
    [
        (VPAD * 2, {"video": [FRAMES, FRAMES]}, {}, "2 videos in one prompt; at most 1"),
        (VPAD, {}, {}, "1 video placeholders but 0 videos"),
        ("no placeholder", {"video": FRAMES}, {}, "0 video placeholders but 1 videos"),
        (VPAD, {"video": [None]}, {"video": ["nope"]}, "video uuid 'nope' is not in the media"),
        (VPAD, {"video": {"frames": FRAMES, "fps": 0}}, {}, "video[0].fps must be a positive"),
        (VPAD, {"video": {"frames": FRAMES, "rate": 2}}, {}, "unknown fields ['rate']"),
        (VPAD, {"video": [[]]}, {}, "video[0] must be a non-empty list of PIL frames"),
        (VPAD, {"video": [[FRAMES[0], "x"]]}, {}, "frame 1 must be a PIL image"),
        (VPAD, {"video": [[FRAMES[0], make_image(84, 56, 0)]]}, {}, "frames differ in size"),
    ],
)
def test_bad_video_input_is_an_input_error(
    small: LLM, text: str, data: dict[str, Any], uuids: dict[str, Any], message: str
) -> None:
    prompt = {"prompt": chat(text), "multi_modal_data": data, "multi_modal_uuids": uuids}
    with pytest.raises(InputError) as info:
        small.generate(prompt, GREEDY)
    assert message in str(info.value)


def test_a_uuid_names_one_modality(small: LLM) -> None:
    image = make_image(56, 56, seed=5)
    small.generate(
        {
            "prompt": chat(PAD),
            "multi_modal_data": {"image": [image]},
            "multi_modal_uuids": {"image": ["shared"]},
        },
        GREEDY,
    )
    with pytest.raises(InputError, match="names a cached image, not a video"):
        small.generate(
            {
                "prompt": chat(VPAD),
                "multi_modal_data": {"video": [None]},
                "multi_modal_uuids": {"video": ["shared"]},
            },
            GREEDY,
        )
