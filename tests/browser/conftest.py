"""Headless Chromium (Debian's package) driven by Playwright, against a real gateway.

The fixture installs Debian's chromium when it is missing and we are root (as CI is); anywhere
else the tests fail with the command to run, rather than skip silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
# The page waits on the admin API, which shares 2 cores with the whole suite: generous waits.
expect.set_options(timeout=15_000)


def ensure_chromium() -> str:
    if not os.path.exists(CHROMIUM) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "chromium"], check=True, env=env, capture_output=True)
    if not os.path.exists(CHROMIUM):
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium")
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return ensure_chromium()


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path, headless=True)
        yield b
        await b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
