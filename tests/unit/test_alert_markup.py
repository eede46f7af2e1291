"""Alert text in chat channels is escaped for each channel's markup (SPEC §12): a token named to
ping @channel or hide a link shows as the literal text in Slack, Teams and Discord, while the
webhook, email and log channels carry the values unchanged, as data."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.config import AlertChannel
from gateway.monitor.channels import (
    ZWJ,
    DiscordChannel,
    HttpSession,
    LogChannel,
    SlackChannel,
    TeamsChannel,
    WebhookChannel,
    markdown_escape,
    slack_escape,
)
from gateway.monitor.checks import make_alert

HOSTILE = ("<!channel> @everyone @here [click](https://evil.example/x) "
           "<https://evil.example|Reset your password>")
SUBJECT = "# @here **boss** [x](https://evil.example/s)"
URL = "https://hooks.example/T0/B0/x"


def alert() -> dict[str, Any]:
    """A token_expiring alert as the check makes it, for a token with a hostile name."""
    return make_alert(
        "token_expiring", "high", f"token tok_1 ({HOSTILE}) of {SUBJECT} expires in 6d",
        "tok_1|7d", datetime(2026, 11, 30, tzinfo=UTC), token_id="tok_1", subject=SUBJECT,
        threshold="7d", details={"name": HOSTILE}).public()


def channel(kind: type[Any], **extra: Any) -> Any:
    cfg = AlertChannel(type=kind.__name__.removesuffix("Channel").lower(), url=URL, **extra)
    return kind(cfg, HttpSession())


def rendered(markdown: str) -> str:
    """As a CommonMark renderer (Teams' and Discord's markdown is a subset) shows it."""
    markdown_it = pytest.importorskip("markdown_it")
    html: str = markdown_it.MarkdownIt("commonmark").render(markdown)
    return html


def no_mentions(text: str) -> None:
    for mention in ("@everyone", "@here", "<!channel>", "<!here>", "<!everyone>"):
        assert mention not in text, (mention, text)


def test_slack_escapes_its_control_characters_so_nothing_pings_or_hides_a_link() -> None:
    text = channel(SlackChannel).body(alert())["text"]
    assert "<" not in text and ">" not in text  # no <!channel>, no <url|label> link
    assert "&lt;!channel&gt;" in text
    assert "&lt;https://evil.example|Reset your password&gt;" in text
    assert text.startswith("[authgate] high: token tok_1 (")
    assert slack_escape("a & b <c>") == "a &amp; b &lt;c&gt;"  # & first: no double escape
    assert slack_escape("&lt;") == "&amp;lt;"


def test_discord_shows_the_name_literally_and_keeps_allowed_mentions_off() -> None:
    body = channel(DiscordChannel).body(alert())
    assert body["allowed_mentions"] == {"parse": []}
    content = body["content"]
    no_mentions(content)
    assert f"@{ZWJ}everyone" in content and f"@{ZWJ}here" in content
    html = rendered(content)
    assert "<a " not in html and "<h1" not in html and "<strong" not in html, html
    # what a reader sees is the name as written (bar the invisible joiners)
    assert "[click](https://evil.example/x)" in html.replace(ZWJ, "")
    assert len(body["content"]) <= 2000


def test_teams_escapes_the_message_and_the_facts() -> None:
    card = channel(TeamsChannel).body(alert())["attachments"][0]["content"]
    message = card["body"][1]["text"]
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    for text in (message, facts["subject"]):
        no_mentions(text)
        html = rendered(text)
        assert "<a " not in html and "<h1" not in html and "<strong" not in html, html
    assert "[click](https://evil.example/x)" in rendered(message).replace(ZWJ, "")
    # plain values read the same once rendered
    assert rendered(facts["kind"]) == "<p>token_expiring</p>\n"
    assert rendered(facts["token_id"]) == "<p>tok_1</p>\n"


@pytest.mark.parametrize("text", ["- item", "+ item", "> quote", "1 * 2", "`code`", "a_b_c",
                                  "~~gone~~", "a|b", "\\[x]", "line\n- two"])
def test_markdown_escape_leaves_no_markup(text: str) -> None:
    html = rendered(markdown_escape(text))
    for tag in ("<ul", "<ol", "<blockquote", "<em", "<code", "<del", "<a ", "<table"):
        assert tag not in html, (text, html)


async def test_webhook_and_log_carry_the_values_unchanged(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    a = alert()
    hook = channel(WebhookChannel, secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert hook.body(a)["alert"]["message"] == a["message"] and HOSTILE in a["message"]
    assert hook.body(a)["alert"]["subject"] == SUBJECT
    with caplog.at_level(logging.WARNING, "authgate.alerts"):
        await LogChannel().send(a, "msg_1")
    logged = json.loads(caplog.records[-1].getMessage().removeprefix("alert "))
    assert logged["message"] == a["message"] and logged["details"]["name"] == HOSTILE
