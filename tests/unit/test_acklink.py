"""Acknowledgment links: tokens, per-sender policy, templates, link rewriting in text and HTML."""

from __future__ import annotations

import hashlib
import html
import itertools
import re
from pathlib import Path

import pytest

from relay.certify.acklink import (
    AckLink,
    AckPolicy,
    AckTemplates,
    LinkMaker,
    insert_html,
    matches,
    rewrite_html,
    rewrite_text,
)
from relay.config import AckConfig, AckSender
from relay.errors import CertifyError, ConfigError

PUBLIC = "https://accuse.ville-exemple.fr/"
PORTAL = "https://portail.ville-exemple.fr/"


def maker() -> LinkMaker:
    counter = itertools.count()
    return LinkMaker(PUBLIC, lambda: f"T{next(counter):021d}")


def test_token_is_at_least_128_bits_and_known_by_its_sha256() -> None:
    link = AckLink("A" * 22, None)
    assert link.token_sha256 == hashlib.sha256(b"A" * 22).hexdigest()
    assert link.url(PUBLIC) == "https://accuse.ville-exemple.fr/a/" + "A" * 22
    for bad in ("A" * 21, "A" * 21 + "/", "A" * 21 + "é"):
        with pytest.raises(CertifyError):
            AckLink(bad, None)


def test_policy_first_matching_sender_rule_wins() -> None:
    config = AckConfig(
        insert=True,
        rewrite_patterns=["https://default.example/"],
        senders=[
            AckSender(match="convocations@ville-a.fr", insert=False, rewrite_patterns=[PORTAL]),
            AckSender(match="@ville-a.fr", insert=True, rewrite_patterns=[]),
            AckSender(match="*", insert=False, rewrite_patterns=[]),
        ],
    )
    assert AckPolicy.for_sender(config, "Convocations@Ville-A.fr") == AckPolicy(False, (PORTAL,))
    assert AckPolicy.for_sender(config, "dgs@ville-a.fr") == AckPolicy(True, ())
    assert AckPolicy.for_sender(config, "x@elsewhere.fr") == AckPolicy(False, ())
    assert AckPolicy.for_sender(AckConfig(), "x@elsewhere.fr") == AckPolicy(True, ())


def test_text_links_keep_query_fragment_percent_and_parentheses_but_not_trailing_punctuation() -> None:
    m = maker()
    text = (
        f"Voir {PORTAL}doc?id=1&part=2#s3. Puis (voir {PORTAL}d%C3%A9lib_(2026)), "
        f"et {PORTAL}wiki/Conseil_(France)! <{PORTAL}odj?a=1&b=2> ou https://autre.example/x?y=1."
    )
    out = rewrite_text(text, (PORTAL,), m)
    targets = [link.target_url for link in m.links]
    assert targets == [
        f"{PORTAL}doc?id=1&part=2#s3",
        f"{PORTAL}d%C3%A9lib_(2026)",
        f"{PORTAL}wiki/Conseil_(France)",
        f"{PORTAL}odj?a=1&b=2",
    ]
    urls = [link.url(PUBLIC) for link in m.links]
    assert out == (
        f"Voir {urls[0]}. Puis (voir {urls[1]}), et {urls[2]}! <{urls[3]}> ou https://autre.example/x?y=1."
    )


def test_html_hrefs_are_unescaped_before_matching_and_escaped_on_insertion() -> None:
    m = maker()
    doc = (
        f'<a href="{PORTAL}doc?id=1&amp;part=2#s3">doc</a>'
        f"<A class=x HREF='{PORTAL}d%C3%A9lib_(2026)'>d</A>"
        f"<a href={PORTAL}odj?a=1&amp;b=2>odj</a>"
        f'<a href="https://autre.example/x?y=1&amp;z=2">autre</a>'
        f'<p>{PORTAL} in text is not a link</p>'
    )
    out = rewrite_html(doc, (PORTAL,), m)
    assert [link.target_url for link in m.links] == [
        f"{PORTAL}doc?id=1&part=2#s3",
        f"{PORTAL}d%C3%A9lib_(2026)",
        f"{PORTAL}odj?a=1&b=2",
    ]
    assert all("&amp;" not in link.target_url for link in m.links)
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]*)"', out, re.I)]
    assert hrefs == [link.url(PUBLIC) for link in m.links] + ["https://autre.example/x?y=1&z=2"]
    assert f"<p>{PORTAL} in text is not a link</p>" in out


def test_no_patterns_no_change() -> None:
    m = maker()
    assert rewrite_text(f"{PORTAL}x", (), m) == f"{PORTAL}x"
    assert rewrite_html(f'<a href="{PORTAL}x">', (), m) == f'<a href="{PORTAL}x">'
    assert m.links == []


def test_html_block_goes_after_the_body_tag_with_an_escaped_url() -> None:
    block = AckTemplates(html='<p><a href="{url}">ok</a></p>').html_block('https://a.example/a/x?"<&')
    assert block == '<p><a href="https://a.example/a/x?&quot;&lt;&amp;">ok</a></p>'
    assert insert_html('<html><BODY class="c">Hi</BODY>', "[B]") == '<html><BODY class="c">[B]Hi</BODY>'
    assert insert_html("<p>Hi</p>", "[B]") == "[B]<p>Hi</p>"


def test_templates_french_by_default_english_on_request_and_from_files(tmp_path: Path) -> None:
    assert "Accusé de réception" in AckTemplates.from_config(AckConfig()).text_block("U")
    english = AckTemplates.from_config(AckConfig(language="en"))
    assert "please confirm" in english.text_block("U") and "Confirm receipt" in english.html_block("U")
    text = tmp_path / "block.txt"
    text.write_text("Merci de confirmer : {url}\n", encoding="utf-8")
    custom = AckTemplates.from_config(AckConfig(text_template=str(text)))
    assert custom.text_block("https://x/a/t") == "Merci de confirmer : https://x/a/t\n"
    text.write_text("no placeholder", encoding="utf-8")
    with pytest.raises(ConfigError, match="placeholder"):
        AckTemplates.from_config(AckConfig(text_template=str(text)))
    with pytest.raises(ConfigError, match="cannot read"):
        AckTemplates.from_config(AckConfig(html_template=str(tmp_path / "missing.html")))


def test_a_pattern_without_a_path_stops_at_its_host() -> None:
    """Before: https://portal.example.org took in https://portal.example.org.evil.example, and the
    acknowledgment link then led on to that host."""
    patterns = ("https://portal.example.org",)
    for url in ("https://portal.example.org", "https://portal.example.org/seance", "https://portal.example.org?x=1",
                "https://portal.example.org#ordre"):
        assert matches(url, patterns), url
    for url in ("https://portal.example.org.evil.example/", "https://portal.example.orgx/",
                "https://portal.example.org@evil.example/"):
        assert not matches(url, patterns), url
    assert matches("https://portal.example.org/docs-2026/x", ("https://portal.example.org/docs",))  # same host
