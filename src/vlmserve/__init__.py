"""vlmserve: serving for vision-language models with output you can trust."""

__version__ = "0.1.0"
