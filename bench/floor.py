"""The gateway with judging made free: a lower bound for what auth can cost, for the benchmark.

    AUTHGATE_...=... python bench/floor.py      # as ``python -m gateway serve``, same settings

The pipeline's first decision for each presented credential is kept and handed back for every
later request with it: no parse, hash, lookup, scope check, limiter call or usage count. Everything
else is the real gateway: the same server, header rules (identity and rate-limit headers still
added, from the kept decision), forwarder, metrics and access log. ``gateway_bench.py --floor``
runs it as a row (with ``access_log: false``): the gap between it and the bare pass-through is
what the gateway costs beyond judging (SPEC §6's added headers, X-Forwarded-*, the request id,
disconnect watching, metrics), which no faster pipeline can remove.
"""

from __future__ import annotations

import sys
from typing import Any

from gateway.cli import main
from gateway.pipeline import Decision, Pipeline

_judge = Pipeline.decide
_kept: dict[bytes, Decision] = {}


async def _replay(self: Pipeline, method: str, path: str, headers: Any, ip: Any) -> Decision:
    credential = next((v for n, v in headers if n == b"authorization"), b"")
    decision = _kept.get(credential)
    if decision is None:
        decision = _kept[credential] = await _judge(self, method, path, headers, ip)
    return decision


if __name__ == "__main__":
    Pipeline.decide = _replay  # type: ignore[method-assign]
    sys.argv = ["authgate", "serve"]
    main()
