"""A stand-in for ``google.colab``, for tests only: Google's own services cannot run here.

Only what Google provides is faked (Drive's mount and flush, ending the runtime); every call is
recorded in the file named by ``FAKE_COLAB_LOG`` so that a test can check what the library asked
of Colab.
"""

from __future__ import annotations

import json
import os


def _record(call: str, **args: object) -> None:
    log = os.environ.get("FAKE_COLAB_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"call": call, **args}) + "\n")
