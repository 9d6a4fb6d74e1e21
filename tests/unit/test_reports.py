"""relay.outbound.reports and relay.outbound.verp: real reports of many MTAs, forged and truncated ones.

The samples in tests/corpus/reports are real bounces (addresses anonymised by their
collectors); tests/corpus/reports/README.md says where each comes from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.outbound import verp
from relay.outbound.dsn import Failure, build_dsn
from relay.outbound.reports import MAX_REPORT_OCTETS, ReportError, parse_report
from tests.unit.test_dsn import WHEN

CORPUS = Path(__file__).parent.parent / "corpus" / "reports"

# file: (format, action, status, reply code, remote MTA, the recipient the report names)
ACCEPTED = {
    # Postfix 3.7 reports 'relayed' when the next hop offers no DSN; its reply is the proof.
    "postfix-success.eml": ("rfc3464", "relayed", "2.0.0", 250, "127.0.0.1", "elu1@member1.test"),
    "postfix-refused.eml": ("rfc3464", "failed", "5.1.1", 550, "127.0.0.1", "elu2@member2.test"),
    "lhost-postfix-02.eml": ("rfc3464", "failed", "5.2.1", 550, "mx.example.co.jp", "filtered@example.co.jp"),
    "lhost-postfix-05.eml": ("rfc3464", "failed", "4.1.1", 450, "excalibur.example.org", "kijitora@example.org"),
    "lhost-postfix-31.eml": ("rfc3464", "failed", "5.1.1", 550, "gmail-smtp-in.l.google.com", "kijitora@gmail.com"),
    "lhost-exim-43.eml": ("rfc3464", "failed", "5.0.0", 550, "mail-mx1.example.net", "kijitora@example.net"),
    "lhost-exchange2007-01.eml": ("rfc3464", "failed", "5.1.1", 550, None, "mikeneko@example.co.jp"),
    "lhost-office365-13.eml": ("rfc3464", "failed", "5.1.10", 550, None, "kijitora-nyaan@neko.kyoto.example.jp"),
    "lhost-sendmail-01.eml": ("rfc3464", "failed", "5.1.1", 550, "mx.bouncehammer.jp", "userunknown@bouncehammer.jp"),
    "lhost-sendmail-29.eml": ("rfc3464", "delayed", "4.5.0", None, None,
                              "this-local-part-does-not-exist-on-the-system@y-mobile.ne.jp"),
    "rfc3464-63.eml": ("rfc3464", "failed", "5.1.1", 550,
                       "gmr-smtp-in.l.google.com. (2607:f8b0:400e:c03::e, the server for the domain googlegroups.com.)",
                       "libsisimai-2@googlegroups.com"),
    "rfc3464-55.eml": ("rfc3464", "delayed", "4.4.1", None, None, "sotoneko@nora.nyaan.jp"),
    "lhost-amazonses-05.eml": ("rfc3464", "failed", "5.1.1", 550, None, "bounce@simulator.amazonses.com"),
    "lhost-opensmtpd-06.eml": ("rfc3464", "delayed", "4.4.7", None, None, "nekochan@libsisimai.org"),
    "lhost-outlook-06.eml": ("rfc3464", "delayed", "4.4.7", None, None, "kijitora@example.com"),
    "lhost-exim-02.eml": ("text", "failed", "5.1.1", 550, None, "kijitora@example.jp"),
    "lhost-exim-38.eml": ("text", "delayed", "4.0.0", 450, None, "kijitora@example.co.jp"),
    "lhost-qmail-16.eml": ("text", "failed", "5.1.1", 550, None, "userunknown@libsisimai.net"),
    "lhost-gmail-01.eml": ("text", "failed", "5.1.1", 550, None, "userunknown@example.jp"),
    "lhost-office365-01.eml": ("text", "failed", "5.1.10", 550, None, "kijitora@example.com"),
}
REFUSED = {
    "lhost-exchange2003-01.eml": "without a status",  # Exchange 2003's text names no code at all
    "lhost-sendmail-38.eml": "more than one delivery-status part",
    "rfc3464-28.eml": "action 'deliverable'",  # not an RFC 3464 action
}


def sample(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_real_reports_are_read(name):
    fmt, action, status, code, remote, recipient = ACCEPTED[name]
    report = parse_report(sample(name))
    found = report.status_for(recipient)
    assert (report.format, found and found.action, found and found.status) == (fmt, action, status)
    assert found.reply_code == code and found.remote_mta == remote
    assert report.status_for("someone.else@example.invalid") is None


def test_the_corpus_covers_the_mtas_the_issue_names():
    names = " ".join(ACCEPTED)
    for mta in ("postfix", "exim", "exchange", "gmail", "sendmail", "office365", "qmail"):
        assert mta in names
    assert len(ACCEPTED) >= 15 and set(ACCEPTED) | set(REFUSED) == {p.name for p in CORPUS.glob("*.eml")}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unreadable_reports_are_refused(name):
    with pytest.raises(ReportError, match=REFUSED[name]):
        parse_report(sample(name))


def test_postfix_success_report_carries_the_remote_reply_and_envelope():
    report = parse_report(sample("postfix-success.eml"))
    status = report.recipients[0]
    assert status.diagnostic.startswith("250 ") and status.original_recipient == "elu1@member1.test"
    assert report.envelope_id is not None and report.reporting_mta


def test_our_own_dsn_reads_back():
    data = build_dsn(
        reporting_mta="relay.example.org", sender="mairie@example.org",
        failures=[Failure("elu@example.net", "5.1.1", "550 5.1.1 no such user", "rfc822;elu@example.net")],
        original_headers=b"From: mairie@example.org\n", original_message_id="<c@example.org>", arrival=WHEN,
        now=WHEN, boundary="B", message_id="<d@relay.example.org>",
    )
    status = parse_report(data).status_for("elu@example.net")
    assert (status.action, status.status, status.reply_code) == ("failed", "5.1.1", 550)


# -- truncated ------------------------------------------------------------------


def cut_after(data: bytes, marker: bytes) -> bytes:
    return data[: data.index(marker) + len(marker)]


@pytest.mark.parametrize("marker", [b"Status: 5.2.1\n", b"Arrival-Date: Sat, 21 Jun 2014 18:34:34 +0000 (UTC)\n\n",
                                    b"Action: fai"])
def test_a_report_cut_inside_its_status_part_is_refused(marker):
    with pytest.raises(ReportError):
        parse_report(cut_after(sample("lhost-postfix-02.eml"), marker))


def test_a_report_cut_in_the_returned_headers_still_says_what_it_says():
    data = sample("lhost-postfix-02.eml")
    cut = cut_after(data, b"Content-Type: message/rfc822\n")  # the third part, after the status part
    assert parse_report(cut).status_for("filtered@example.co.jp").status == "5.2.1"


def test_a_report_without_any_boundary_is_refused():
    data = sample("lhost-postfix-02.eml")
    head, _, _ = data.partition(b"\n\n")
    with pytest.raises(ReportError):
        parse_report(head + b"\n\nThis is the mail system at host smtp.example.com.\n")


# -- forged ---------------------------------------------------------------------


def forged(**changes: bytes) -> bytes:
    data = sample("postfix-success.eml")
    for old, new in changes.items():
        assert old.encode() in data, old
        data = data.replace(old.encode(), new)
    return data


@pytest.mark.parametrize("old,new,why", [
    ("Status: 2.0.0", b"Status: 5.1.1", "contradictory"),  # 'relayed' with a failure status
    ("Action: relayed", b"Action: perhaps", "action"),
    ("Status: 2.0.0", b"Status: OK", "status"),
    ("Reporting-MTA:", b"X-Reporting-MTA:", "Reporting-MTA"),
    ("Final-Recipient:", b"X-Final-Recipient:", "Final-Recipient"),
])
def test_malformed_or_contradictory_fields_are_refused(old, new, why):
    with pytest.raises(ReportError, match=why):
        parse_report(forged(**{old: new}))


def test_a_report_about_another_recipient_names_no_status_for_ours():
    data = forged(**{"elu1@member1.test": b"someone@elsewhere.test"})
    assert parse_report(data).status_for("elu1@member1.test") is None


def test_plain_mail_and_auto_replies_are_not_reports():
    for data in (b"From: a@b.test\nSubject: hello\n\nJust a message.\n",
                 b"From: elu@member.test\nSubject: Absent\nAuto-Submitted: auto-replied\n\nI am away until Monday; 550.\n",
                 b"", b"\x00\xff" * 100):
        with pytest.raises(ReportError):
            parse_report(data)


def test_a_text_bounce_never_says_delivered():
    text = b"Subject: x\n\nThis message was created automatically by mail delivery software.\n" \
           b"A message that you sent could not be delivered to one or more of its recipients.\n" \
           b"  elu@member.test\n    250 2.0.0 delivered after all\n"
    with pytest.raises(ReportError):
        parse_report(text)


def test_oversized_reports_are_refused():
    with pytest.raises(ReportError, match="larger"):
        parse_report(sample("postfix-success.eml") + b"x" * MAX_REPORT_OCTETS)


# -- return paths -----------------------------------------------------------------


def test_return_paths_carry_their_token_and_nothing_else():
    token = "0123456789abcdef" * 2
    path = verp.return_path(token, "bounces.example.org")
    assert path == f"bounces+{token}@bounces.example.org"
    assert verp.token_of(path, "bounces.example.org") == token
    assert verp.token_of(path.upper(), "BOUNCES.example.org") == token  # MTAs may change the case
    for other in (f"bounces+{token}@example.org", f"bounces+{token[:-1]}@bounces.example.org",
                  f"bounces+{token}%evil.example@bounces.example.org", f"x{token}@bounces.example.org",
                  f"bounces+{token}@bounces.example.org.evil.example"):
        assert verp.token_of(other, "bounces.example.org") is None
    assert verp.token_of(path, "") is None


def test_status_requests_ask_for_every_outcome_headers_only():
    request = verp.StatusRequest(token="ab" * 16, recipient="élu+x=y@example.org")
    assert request.mail_options == ["RET=HDRS", f"ENVID={'ab' * 16}"]
    assert request.rcpt_options == ["NOTIFY=SUCCESS,FAILURE,DELAY"]  # no ORCPT for a UTF-8 address
    ascii_one = verp.StatusRequest(token="ab" * 16, recipient="elu+x=y@example.org")
    assert ascii_one.rcpt_options == ["NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;elu+2Bx+3Dy@example.org"]
    given = verp.StatusRequest(token="ab" * 16, recipient="elu@example.org", orcpt="rfc822;alias@example.org")
    assert given.rcpt_options[1] == "ORCPT=rfc822;alias@example.org"


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(ACCEPTED)), cut=st.integers(min_value=0), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=8))
def test_damaged_reports_are_read_or_refused_never_crash(name, cut, flips):
    data = bytearray(sample(name))
    for where, octet in flips:
        data[where % len(data)] = octet
    data = data[: cut % (len(data) + 1)]
    try:
        report = parse_report(bytes(data))
    except ReportError:
        return
    for status in report.recipients:  # what is read is well formed
        assert status.action in ("failed", "delayed", "delivered", "relayed", "expanded")
        assert status.status[0] in "245" and (status.action in ("failed", "delayed")) == (status.status[0] != "2")
