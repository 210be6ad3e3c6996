"""torrc-style configuration: the file syntax, command line and options C tor users know.

`TorConfig` is the configuration; `load_config` reads it as ``tor-client`` does (command
line, torrc, defaults torrc).  The options themselves are defined once, in
`puretor.config.options`.
"""

from __future__ import annotations

from puretor.config.options import (
    OPTION_NAMES,
    OPTIONS,
    OptionSpec,
    TorConfig,
    default_data_directory,
    default_torrc_path,
    load_config,
    parse_command_line,
    parse_torrc,
)
from puretor.config.torrc import CommandLine
from puretor.config.values import (
    DEFAULT_SOCKS_PORT,
    LogRange,
    LogSpec,
    SocksPortConfig,
    parse_interval,
)

__all__ = [
    "DEFAULT_SOCKS_PORT",
    "OPTIONS",
    "OPTION_NAMES",
    "CommandLine",
    "LogRange",
    "LogSpec",
    "OptionSpec",
    "SocksPortConfig",
    "TorConfig",
    "default_data_directory",
    "default_torrc_path",
    "load_config",
    "parse_command_line",
    "parse_interval",
    "parse_torrc",
]
