"""Training data: token files written by the tokenizer and read by training."""

from lmforge.data.token_file import (
    TokenFile,
    TokenFileError,
    TokenFileHeader,
    dtype_for,
    header_path,
    write_header,
)

__all__ = [
    "TokenFile",
    "TokenFileError",
    "TokenFileHeader",
    "dtype_for",
    "header_path",
    "write_header",
]
