"""Child process for the atheris engine: ``python -m fuzz._atheris_main TARGET [libFuzzer args]``.

Run by `fuzz.run`, which parses libFuzzer's output.  puretor is imported inside
``atheris.instrument_imports`` so its code (and only its code) reports coverage
and comparisons to libFuzzer.  With ``PURETOR_FUZZ_KEEP_GOING=1`` contract
violations are recorded by the `Harness` and fuzzing goes on; otherwise the
first one propagates and libFuzzer writes its own crash artifact.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    import atheris

    from fuzz.harness import Harness

    name = sys.argv[1]
    with atheris.instrument_imports(include=["puretor"]):
        from fuzz.targets import load

        target = load(name)
    keep_going = os.environ.get("PURETOR_FUZZ_KEEP_GOING") == "1"
    harness = Harness(target, keep_going=keep_going)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
