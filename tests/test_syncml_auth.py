"""Authentication digests against the published vector and the spec formula."""

import base64
import hashlib

import pytest

from dmserver.syncml import auth


def test_md5_digest_published_vector():
    # OMA DM Security: user Bruce2, password OhBehave, nonce Nonce.
    assert auth.md5_digest("Bruce2", "OhBehave", b"Nonce") == "Zz6EivR3yeaaENcRN6lpAQ=="


def test_hmac_mac_matches_formula():
    body = b"<SyncML>...</SyncML>"
    b64md5 = lambda data: base64.b64encode(hashlib.md5(data).digest())  # noqa: E731
    expected = b64md5(b64md5(b"dev:pw") + b":" + b"n0nce" + b":" + b64md5(body)).decode()
    assert auth.hmac_mac("dev", "pw", b"n0nce", body) == expected


@pytest.mark.parametrize(
    "header",
    [
        'algorithm=MD5, username="IMEI:1", mac=abc==',
        'username="IMEI:1", mac=abc==',
        'mac=abc==,username=IMEI:1',
        '  username = "IMEI:1" ,  algorithm = MD5 , mac = abc==  ',
    ],
)
def test_hmac_header_parsed_leniently(header):
    parsed = auth.parse_hmac_header(header)
    assert parsed.username == "IMEI:1"
    assert parsed.mac == "abc=="
    assert parsed.algorithm == "MD5"


@pytest.mark.parametrize("header", ["", "mac=abc", 'username="x"', "garbage without equals"])
def test_hmac_header_unusable(header):
    assert auth.parse_hmac_header(header) is None


def test_hmac_header_canonical_form():
    assert auth.format_hmac_header("IMEI:1", "abc==") == 'algorithm=MD5, username="IMEI:1", mac=abc=='


def test_basic_credential_round_trip():
    value = auth.basic_credential("user", "pa:ss")
    assert value == base64.b64encode(b"user:pa:ss").decode()
    assert auth.parse_basic_credential(value) == ("user", "pa:ss")
    assert auth.parse_basic_credential("!!!") is None


def test_decode_nonce_keeps_non_base64_text():
    assert auth.decode_nonce("AAAAAA==") == b"\x00\x00\x00\x00"
    # "null" happens to be valid base64; a value with characters outside the
    # alphabet is kept as text.
    assert auth.decode_nonce("not base64!") == b"not base64!"


def test_basic_credential_with_colon_in_username():
    value = auth.basic_credential("IMEI:490154203237518", "pw")
    assert auth.basic_credential_matches(value, "IMEI:490154203237518", "pw")
    assert not auth.basic_credential_matches(value, "IMEI", "490154203237518:pw2")
