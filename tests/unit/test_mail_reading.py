"""Reading mail from the wild (issue 15), piece by piece: charsets, names, MIME shapes, reply
styles, the full body beside the cut one, and the Message-ID of mail that does not parse.
(The fixtures of fixtures/emails/ take the same kinds of mail through the whole pipeline.)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from mailgate.mail import charsets, jis, quotes
from mailgate.mail.parse import message_id_of, parse
from tests.support import make_message

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "emails"


# --- charsets --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, encoding, declared", [
    ("联系人：王喆，请尽快处理。", "gbk", "gb2312"),
    ("담당자: 김똠방 입니다.", "cp949", "ks_c_5601-1987"),
    ("Rechnung über 100 € – „geprüft“", "cp1252", "iso-8859-1"),
    ("Grüße aus Köln", "utf-8", "iso-8859-1"),  # mislabelled UTF-8
    ("Grüße aus Köln", "cp1252", "utf-8"),  # mislabelled Windows-1252
    ("自从昨天系统升级以后，我们部门的电脑都无法连接到公司的网络打印机。", "gbk", None),
    ("三階のプリンターが昨日から印刷できません。ご確認をお願いします。", "cp932", None),
    ("Добрый день! Подскажите, пожалуйста, по наличию.", "cp1251", "windows-1251"),
    ("Zażółć gęślą jaźń", "cp1250", "x-unknown"),
])
def test_text_decodes_whatever_the_declaration_says(text, encoding, declared):
    assert charsets.decode(text.encode(encoding), declared) == text


def test_iso_2022_jp_with_nec_characters_decodes_without_escape_codes():
    data = (FIXTURES / "encoding" / "iso-2022-jp-nec.eml").read_bytes()
    body = data.split(b"\r\n\r\n", 1)[1]
    text = jis.decode_iso2022jp(body)
    assert "①会議室の予約システムが使えません" in text and "㈱" in text and "\x1b" not in text


def test_detection_reads_a_bounded_sample_of_a_big_part():
    big = ("自从昨天系统升级以后，我们部门的电脑都无法连接。" * 400_000).encode("gbk")  # ~18 MB
    started = time.perf_counter()
    text = charsets.decode(big, None)
    assert time.perf_counter() - started < 3.0
    assert text.startswith("自从昨天系统升级以后")


@pytest.mark.parametrize("declared", [None, "iso-8859-1", "iso-gb2312", "us-ascii"])
def test_utf8_with_pieces_in_windows_1252_reads_each_piece_in_its_charset(declared):
    """A UTF-8 body under a footer a legacy server appended in Windows-1252 (Zammad's mail060
    is of the kind): neither charset alone reads it, so each byte that is no UTF-8 is read
    as Windows-1252 (or as the single-byte charset declared)."""
    data = "Grüße – 差出人 ".encode() + "Geschäftsführer: Jürgen Weiß".encode("cp1252")
    assert charsets.decode(data, declared) == "Grüße – 差出人 Geschäftsführer: Jürgen Weiß"


def test_text_in_a_double_byte_charset_is_not_taken_for_utf8_with_pieces():
    for text, encoding in (("自从昨天系统升级以后，我们部门的电脑都无法连接到公司的网络打印机。", "gbk"),
                           ("三階のプリンターが昨日から印刷できません。ご確認をお願いします。", "cp932"),
                           ("회의실 예약 시스템에 접속할 수 없습니다. 확인 부탁드립니다.", "cp949"),
                           ("我們的印表機壞了，請盡快派人來修理。謝謝您的幫忙。", "big5")):
        assert charsets.decode(text.encode(encoding)) == text, encoding


def test_undeclared_text_takes_the_charset_the_rest_of_the_message_names():
    """"ÄÖÜß" alone decodes as cleanly in GBK (two Chinese characters) as in Latin-1: the
    subject's encoded word says which (Zammad's mail105 is of the kind)."""
    data = "ÄÖÜß sind kaputt.".encode("cp1252")
    assert charsets.decode(data, None, hint="iso-8859-1") == "ÄÖÜß sind kaputt."
    assert charsets.decode("ÄÖÜß sind kaputt.".encode(), None, hint="iso-8859-1") == "ÄÖÜß sind kaputt."  # UTF-8 is UTF-8
    assert charsets.decode(data, "windows-1250", hint="iso-8859-1") == data.decode("cp1250")  # a declaration stands
    message = parse(b"From: bernd@acme.example\r\nSubject: =?iso-8859-1?Q?=C4nderung?=\r\n"
                    b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + data)
    assert message.subject == "Änderung" and message.text.startswith("ÄÖÜß sind kaputt."), message.text


def test_mixed_charsets_are_read_in_bounded_time():
    hostile = ("äöü ".encode() + b"\xe4\xf6 x ") * 2_000_000  # 24 MB of pieces in two charsets
    started = time.perf_counter()
    charsets.decode(hostile, "iso-8859-1")
    charsets.decode(hostile[:charsets.MIXED_MAX], None)
    assert time.perf_counter() - started < 2.0


def test_a_from_without_angle_brackets_gives_the_address_and_the_name():
    """A fax or scanner gateway's `From: Name addr@domain` (Zammad's mail087): the parser took
    "test test@example.com" for the address, so no contact could ever match it."""
    message = parse(b"From: Test test@example.com\r\nSubject: Fax\r\n\r\nA fax.\r\n")
    assert (message.from_name, message.from_address) == ("Test", "test@example.com")
    message = parse(b"From: a@b.example c@d.example\r\nSubject: x\r\n\r\nx\r\n")
    assert message.from_address != "c@d.example"  # two addresses: no guess which is the sender


# --- MIME shapes -------------------------------------------------------------------------------


def test_an_attached_message_is_one_eml_with_its_original_bytes():
    raw = (FIXTURES / "attachments" / "attached-message-with-image.eml").read_bytes()
    inner = raw.split(b"Content-Disposition: attachment\r\n\r\n", 1)[1].rsplit(b"\r\n--o1--", 1)[0]
    parsed = parse(raw)
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("Quote 2025-17 for new printers.eml", "message/rfc822")]
    assert hashlib.sha256(parsed.attachments[0].data).hexdigest() == hashlib.sha256(inner).hexdigest()
    assert b"Two spaces   kept." in parsed.attachments[0].data  # not re-serialised


def test_an_image_the_html_shows_by_its_content_id_is_inline_whatever_its_disposition():
    """Python's add_related(..., filename=...) — and some clients — write `attachment` on an
    image of a multipart/related; the HTML shows it by its cid all the same (SPEC §2, §9
    `inline: true`). A file beside the text stays an attachment, Content-ID or not."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@acme.example", "support@example.com", "Screenshot"
    msg.set_content("See the screenshot.")
    msg.add_alternative('<p>See <img src="cid:shot@acme.example"></p>', subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG\r\n\x1a\n", "image", "png", cid="<shot@acme.example>", filename="shot.png")
    msg.add_attachment(b"%PDF-1.4", "application", "pdf", filename="report.pdf", cid="<report@acme.example>")
    assert msg.get_payload()[0].get_payload()[1].get_payload()[1]["Content-Disposition"].startswith("attachment")
    parsed = parse(msg.as_bytes())
    assert [(a.filename, a.inline, a.content_id) for a in parsed.attachments] == [
        ("shot.png", True, "shot@acme.example"), ("report.pdf", False, "report@acme.example")]


def test_generated_names_are_the_same_on_every_parse():
    raw = (FIXTURES / "attachments" / "unnamed-quicktime.eml").read_bytes()
    names = [[a.filename for a in parse(raw).attachments] for _ in range(2)]
    assert names[0] == names[1] == ["before.png", "attachment-2.mov"]


def test_text_parts_of_a_mixed_are_all_kept_in_order():
    text = parse((FIXTURES / "attachments" / "html-beside-text-mixed.eml").read_bytes()).text
    first, html, last = (text.index(s) for s in ("nightly export", "E-4711", "log excerpt"))
    assert first < html < last


def test_raw_8bit_file_names_are_not_mojibake():
    parsed = parse((FIXTURES / "attachments" / "raw-8bit-filenames.eml").read_bytes())
    assert [a.filename for a in parsed.attachments] == ["Prüfprotokoll März.pdf", "Übersicht Größen.csv", "绩效报告.xls"]


# --- replies -----------------------------------------------------------------------------------


ANSWER = "The printer works again."
QUOTE = "> Did you restart the printer?\n> Service Desk\n"


@pytest.mark.parametrize("header", [
    "On Mon, Mar 3, 2025 at 9:00 AM Service Desk <support@example.com> wrote:",
    "Am Mo., 3. März 2025 um 09:00 Uhr schrieb Service Desk <support@example.com>:",
    "Le lun. 3 mars 2025 à 09:00, Service Desk <support@example.com> a écrit :",
    "El lun, 3 mar 2025 a las 9:00, Service Desk (<support@example.com>) escribió:",
    "Il giorno lun 3 mar 2025 alle ore 09:00 Service Desk <support@example.com> ha scritto:",
    "Op ma 3 mrt 2025 om 09:00 schreef Service Desk <support@example.com>:",
    "Dnia 3 marca 2025 09:00 Service Desk napisał(a):",
    "Den mån 3 mars 2025 kl 09:00 skrev Service Desk <support@example.com>:",
    "W dniu 3.03.2025 o 09:00, Service Desk pisze:",  # no library knows it: the attribution rule
])
def test_reply_headers_of_many_languages_end_the_new_text(header):
    assert quotes.new_text(f"{ANSWER}\n\n{header}\n{QUOTE}") == ANSWER


@pytest.mark.parametrize("history", [
    "-----Original Message-----\nFrom: Service Desk\nSent: Monday, March 3, 2025 9:00 AM\nTo: Alice\n\nOld text.",
    "-----Ursprüngliche Nachricht-----\nVon: Service Desk\nGesendet: Montag, 3. März 2025 09:00\nAn: Alice\n\nAlt.",
    "________________________________\nVon: Service Desk\nGesendet: Montag, 3. März 2025 09:00\nAn: Alice\n\nAlt.",
    "  From: Service Desk\n  Sent: Monday, March 3, 2025 9:00 AM\n  To: Alice\n\n  Old text.",
    "*From:* Service Desk\n*Sent:* Monday, March 3, 2025 9:00 AM\n*To:* Alice\n\nOld text.",
    "De : Service Desk\nEnvoyé : lundi 3 mars 2025 09:00\nÀ : Alice\nObjet : Test\n\nAncien texte.",
    "---- Service Desk wrote ----\n\nOld text.",
    "-------- Original message --------\nFrom: Service Desk\nDate: 03/03/2025 09:00\nTo: Alice\n\nOld text.",
    # languages mail-parser-reply does not know, or forms of them it misses (history not quoted)
    "2025. márc. 3., h 9:00 időpontban Service Desk <support@example.com> ezt írta:\nRégi szöveg.",
    "Service Desk <support@example.com> ezt írta (időpont: 2025. márc. 3., H 9:00):\nRégi szöveg.",
    "Service Desk <support@example.com> 在 2025年3月3日 周一 09:00 写道：\n\n旧的文字。",
    "在 2025年3月3日 09:00, Service Desk <support@example.com>\n写道：\n旧的文字。",
    "Em seg., 3 de mar. de 2025 às 09:00, Service Desk <support@example.com> escreveu:\n\nTexto antigo.",
    "03.03.2025 09:00, Service Desk пишет:\nСтарый текст.",
    "3 Mar 2025 Pzt, 09:00 tarihinde Service Desk <support@example.com> şunu yazdı:\nEski metin.",
    "ma 3. maalisk. 2025 klo 9.00 Service Desk <support@example.com> kirjoitti:\nVanha teksti.",
    "2025/03/03 9:00 Service Desk さんは書きました:\n古いテキスト。",
    "Kimden: Service Desk\nGönderildi: 3 Mart 2025 Pazartesi 09:00\nKime: Alice\nKonu: Test\n\nEski metin.",
    "Feladó: Service Desk\nElküldve: 2025. március 3. 9:00\nCímzett: Alice\nTárgy: Teszt\n\nRégi szöveg.",
])
def test_unquoted_history_below_a_reply_header_is_cut(history):
    assert quotes.new_text(f"{ANSWER}\n\n{history}\n") == ANSWER


def test_text_below_and_between_quotes_is_kept_and_quotes_are_dropped():
    body = "On Mon, Mar 3, 2025 Service Desk wrote:\n> Which browser?\n\nFirefox.\n\n> Other users?\n\nYes, Bob too.\n"
    assert quotes.new_text(body) == "Firefox.\n\nYes, Bob too."


def test_quoted_lines_go_without_any_reply_header():
    assert quotes.new_text(f"{ANSWER}\n\n> an old line\n> another\n") == ANSWER


@pytest.mark.parametrize("marker", [
    "---------- Forwarded message ---------", "Begin forwarded message:", "-------- Weitergeleitete Nachricht --------",
    "Début du message réexpédié :",
])
def test_forwards_are_never_cut(marker):
    body = f"See below.\n\n{marker}\nFrom: Monitoring <m@acme.example>\nSubject: ALERT\n\nHTTP 500 for 12 minutes.\n"
    assert "HTTP 500 for 12 minutes." in quotes.new_text(body)


def test_an_original_message_separator_under_a_forward_subject_is_a_forward():
    body = "FYI\n\n-------- Original-Nachricht --------\nVon: Monitoring\nAn: Alice\n\nHTTP 500 seit 12 Minuten.\n"
    assert "HTTP 500 seit 12 Minuten." in quotes.new_text(body, "WG: Alarm")
    assert quotes.new_text(body, "AW: Alarm") == "FYI"


def test_each_comment_keeps_its_full_body(cli):
    cli("org", "add", "Acme")
    cli("contact", "add", "alice@acme.example", "--name", "Alice", "--org", "Acme")
    cli("deliver", stdin=make_message(subject="Printer", body="It is broken.", sender="alice@acme.example"))
    reply = f"{ANSWER}\n\nOn Mon, Mar 3, 2025 Service Desk wrote:\n{QUOTE}"
    cli("deliver", stdin=make_message(subject="Re: [SD-1] Printer", body=reply, sender="alice@acme.example"))
    comment = json.loads(cli("ticket", "show", "SD-1", "--json")[1])["comments"][-1]
    assert comment["body"] == ANSWER
    assert "Did you restart the printer?" in comment["full_body"] and ANSWER in comment["full_body"]


# --- the Message-ID of mail that does not parse ------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (b"Subject: x\r\nMessage-ID:\r\n <folded@acme.example>\r\n\r\nbody", "<folded@acme.example>"),
    (b"message-id: <lower@acme.example>\n\nbody", "<lower@acme.example>"),
    (b"Subject: x\r\n\r\nMessage-ID: <in-the-body@acme.example>\r\n", None),
    (b"\xff\xfe\x00garbage", None),
    (b"", None),
])
def test_message_id_of_raw_bytes(raw, expected):
    assert message_id_of(raw) == expected


def test_message_id_of_is_bounded_on_a_huge_header():
    raw = b"X-Filler: " + b"a" * 20_000_000 + b"\r\nMessage-ID: <late@acme.example>\r\n\r\n"
    started = time.perf_counter()
    assert message_id_of(raw) == "<late@acme.example>"  # below 20 MB of one header field (a quarantine's reason)
    assert message_id_of(b"To: " + b"(" * 500_000 + b"\r\nMessage-ID:\r\n <deep@acme.example>\r\n\r\nx") == \
        "<deep@acme.example>"
    assert message_id_of(b"X-Filler: " + b"\r\n" * 10_000_000) is None
    assert time.perf_counter() - started < 1.0
