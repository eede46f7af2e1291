"""The pipeline's warm path (LRU hit under the presented string's keyed hash, parse
skipped) judges every string as the parse-first path did."""

from __future__ import annotations

from pathlib import Path

from gateway import tokens
from gateway.authority import Actor
from gateway.config import Settings
from gateway.errors import Refusal
from gateway.services import Services

CLI = Actor("cli:review")


def _variants(good: str) -> list[str]:
    _, _, body = good.rpartition("_")
    random = body[:tokens.RANDOM_LEN]
    other = "zz_" + random + tokens.checksum(random)  # right checksum, wrong prefix
    return [good + " ", " " + good, good + "\x00", good.upper(), good[:-1] + "0",
            other, good + "a", good[:-1], "\uff47" + good[1:], good + "é"]


async def _outcome(pipeline, raw: str):
    try:
        record = await pipeline.verify(raw, "192.0.2.7")
        return ("ok", record.id)
    except Refusal as r:
        return (r.status, r.reason, r.description)


async def test_cached_token_variants_refused_and_revocation_seen(tmp_path: Path):
    settings = Settings(store=f"sqlite:///{tmp_path}/s.db", pepper="p", failed_auth_limit=None)
    async with Services.opened(settings) as services:
        pipe = services.pipeline
        record, good = await services.authority.create(CLI, subject="s", name="n")
        before = [await _outcome(pipe, v) for v in _variants(good)]
        assert await _outcome(pipe, good) == ("ok", record.id)  # now in the LRU
        assert pipe.cache.local.get(pipe._hash(good)) is not None
        after = [await _outcome(pipe, v) for v in _variants(good)]
        assert after == before and all(o[0] == 401 for o in after)
        assert await _outcome(pipe, good) == ("ok", record.id)
        await services.authority.revoke(CLI, record.id)
        assert (await _outcome(pipe, good))[2] == "the token has been revoked"
        # an unknown, well-formed token: negative entry, then the same verdict from it
        unknown = tokens.generate("agt").plaintext
        assert (await _outcome(pipe, unknown))[2] == "the token is unknown"
        assert pipe.cache.local.get(pipe._hash(unknown)) is None
        assert (await _outcome(pipe, unknown))[2] == "the token is unknown"
