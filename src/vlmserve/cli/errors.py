"""Start-up failures as one line in the user's words.

The layers below speak their config fields (`max_model_len=40000`, `load_format='dummy'`),
which is right for the offline API; someone who typed flags should read flags. `in_flag_words`
rewrites the field names that are flags of the command into those flags.
"""

from __future__ import annotations

import argparse
import re

# Config fields whose flag is not the field name with dashes.
_ALIASES = {
    "max_bytes_per_item": "--media-max-bytes-per-item",
    "max_bytes_per_request": "--media-max-bytes-per-request",
    "max_data_url_size": "--media-max-data-url-size",
    "max_concurrent_fetches": "--media-max-concurrent-fetches",
    "max_fetches_per_request": "--media-max-fetches-per-request",
    "max_image_pixels": "--media-io-kwargs image.max_pixels",
    "rgba_background_color": "--media-io-kwargs image.rgba_background_color",
    "video_fps": "--media-io-kwargs video.fps",
    "video_max_frames": "--media-io-kwargs video.num_frames",
    "video_max_decoded_frames": "--media-io-kwargs video.max_decoded_frames",
    "video_decode_timeout": "--media-io-kwargs video.decode_timeout",
}
# `name=value` with a quoted or bare value, or a bare snake_case name.
_ASSIGNMENT = re.compile(r"\b([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)]+)")
_SNAKE = re.compile(r"(?<![\w./-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b")


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> the long option that sets it, for every option of `parser`."""
    names = {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.dest not in ("help", "version")
    }
    return {**_ALIASES, **names}


def in_flag_words(message: str, flags: dict[str, str]) -> str:
    def assignment(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        return f"{flags[name]} {value.strip(chr(39) + chr(34))}"

    def bare(match: re.Match[str]) -> str:
        return flags.get(match.group(1), match.group(0))

    one_line = " ".join(message.split())
    return _SNAKE.sub(bare, _ASSIGNMENT.sub(assignment, one_line))
