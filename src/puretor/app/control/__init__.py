"""The control port (control-spec): stem, nyx and other controllers drive tor-client.

`ControlServer` opens the ControlPort/ControlSocket listeners; it reads and acts only
through `TorClient`'s public API and the daemon's `DaemonHooks`.
"""

from __future__ import annotations

from puretor.app.control.server import ControlServer, DaemonHooks

__all__ = ["ControlServer", "DaemonHooks"]
