"""The `vlmserve` command: the only place flags are parsed (`main.py`: the commands;
`serve.py`: `serve`'s flags and start; `configs.py`: flags -> config objects;
`config_file.py`: `--config FILE`; `help.py`: help formatting and list flags; `logs.py`:
logging; `errors.py`: start-up failures as one-line errors; `tiny.py`: tiny models;
`models.py`: `vlmserve models`, the admin API over HTTP)."""

from vlmserve.cli.main import build_parser, main, parse_args

__all__ = ["build_parser", "main", "parse_args"]
