"""A private Tor network of Debian's C tor, sealed in a network namespace, for trying and testing
puretor offline. See ``puretor-testnet --help`` and `TestNetwork`.

Modules: layout (the plan), torrc / bwfile / pki / prepare (files and keys), netns and procs
(sealing and process control), execs (commands run with ``exec``), targets and dns (what the
exits connect to), consensus (readiness), network (`TestNetwork`), ctor_client (a C tor client
for comparison), info (network.json schema).
"""

from puretor.testnet.ctor_client import CTorClient, start_ctor_client
from puretor.testnet.info import NetworkInfo
from puretor.testnet.network import NetworkError, TestNetwork, missing_requirements

__all__ = [
    "CTorClient",
    "NetworkError",
    "NetworkInfo",
    "TestNetwork",
    "missing_requirements",
    "start_ctor_client",
]
