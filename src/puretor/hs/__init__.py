"""Onion services (v3), client side — sans-I/O (rend-spec-v3; spec-map §8).

* :mod:`~puretor.hs.address`    — ``parse_onion_address(host) -> A``, ``encode_onion_address``
* :mod:`~puretor.hs.keys`       — time periods (``HsTimeParams``), blinding ``A -> A'``, subcredential
* :mod:`~puretor.hs.hsdir`      — the HSDir hash ring: ``responsible_hsdirs(netdir, A', period, length)``
* :mod:`~puretor.hs.descriptor` — ``decode_descriptor(body, blinded_key=, subcredential=, now=)``
* :mod:`~puretor.hs.clientauth` — ``ClientOnionAuthDir``: ``load_client_auth_dir(path)``
* :mod:`~puretor.hs.ntor`       — ``build_introduce1(...)``, ``complete_rendezvous(state, body)``
* :mod:`~puretor.hs.client`     — ``plan_descriptor_fetch(netdir, address)`` and helpers

Errors are :class:`puretor.errors.OnionError` carrying the prop 304 SOCKS code.
"""
