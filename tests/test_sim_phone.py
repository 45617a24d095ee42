"""Tests of the simulated phone's DM tree, tree operations and stored state."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from dmserver.fota.signing import init_keys
from dmserver.mo.fumo import FumoState
from dmserver.sim.phone import (
    FumoJob,
    FumoReport,
    Phone,
    PhoneStateError,
    normalize_uri,
)

ROOT = Path(__file__).resolve().parent.parent
OLD_IMAGE = ROOT / "fixtures" / "firmware" / "libexpat-2.5.0-1+deb12u2.so"
# From fixtures/firmware/PROVENANCE.md.
OLD_SHA256 = "a9a60cb5308ca1054427e2973b021ea63c2c801c71d8c0dc9d33218fee1d976a"
DEVICE_ID = "IMEI:490154203237518"
FUMO = "./FUMO/x"


@pytest.fixture(scope="module")
def cert_path(tmp_path_factory) -> Path:
    return init_keys(tmp_path_factory.mktemp("keys"))[1]


@pytest.fixture
def phone(tmp_path, cert_path) -> Phone:
    return Phone.create(
        tmp_path / "phone",
        device_id=DEVICE_ID,
        model="FP-100",
        manufacturer="Acme",
        firmware_version="2.5.0-1+deb12u2",
        firmware=OLD_IMAGE,
        cert=cert_path,
        client_password="client-secret",
        server_password="server-secret",
        battery=80,
        free_storage=500_000,
    )


def test_create_copies_image_and_cert(phone, cert_path):
    assert phone.image_sha256() == OLD_SHA256
    assert phone.cert_path.read_bytes() == cert_path.read_bytes()


def test_create_fills_standard_nodes(phone):
    assert phone.tree.value("./DevInfo/DevId") == DEVICE_ID
    assert phone.tree.value("./DevInfo/Man") == "Acme"
    assert phone.tree.value("./DevInfo/Mod") == "FP-100"
    assert phone.tree.value("./DevInfo/DmV") == "1.2"
    assert phone.tree.value("./DevDetail/FwV") == "2.5.0-1+deb12u2"
    assert phone.tree.value("./DevDetail/Ext/Battery") == "80"
    assert phone.tree.value("./DevDetail/Ext/FreeMem") == "500000"
    assert phone.tree.value(f"{FUMO}/State") == "10"
    assert phone.client_username == DEVICE_ID
    assert phone.server_id == "dmserver"


def test_factory_nonces_are_null(phone):
    assert phone.client_nonce == b"null"
    assert phone.server_nonce == b"null"


def test_create_rejects_existing_phone(phone, cert_path):
    with pytest.raises(PhoneStateError, match="already contains a phone"):
        Phone.create(
            phone.state_dir,
            device_id=DEVICE_ID,
            model="FP-100",
            manufacturer="Acme",
            firmware_version="1",
            firmware=b"x",
            cert=cert_path,
            client_password="c",
            server_password="s",
        )


def test_load_missing_state(tmp_path):
    with pytest.raises(PhoneStateError, match="not found"):
        Phone.load(tmp_path / "nothing")


def test_state_survives_reload(phone):
    phone.client_nonce = b"\x00\x01nonce"
    phone.server_nonce = b"server-nonce"
    phone.battery = 15
    phone.pending_job = FumoJob(
        FUMO, "DownloadAndUpdate", "job-1", "http://127.0.0.1/dd"
    )
    phone.pending_reports.append(
        FumoReport(
            f"{FUMO}/Download",
            "org.openmobilealliance.dm.firmwareupdate.download",
            None,
            501,
        )
    )
    phone.save()
    reloaded = Phone.load(phone.state_dir)
    assert reloaded.client_nonce == b"\x00\x01nonce"
    assert reloaded.server_nonce == b"server-nonce"
    assert reloaded.battery == 15
    assert reloaded.pending_job == phone.pending_job
    assert reloaded.pending_reports == phone.pending_reports
    assert reloaded.tree.to_json() == phone.tree.to_json()


def test_replace_image_swaps_content(phone):
    phone.replace_image(b"new image")
    assert phone.read_image() == b"new image"
    leftovers = [p.name for p in phone.state_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./DevInfo/DevId", "./DevInfo/DevId"),
        ("DevInfo/DevId", "./DevInfo/DevId"),
        ("./FUMO/x/", "./FUMO/x"),
        (".", "."),
        ("./", "."),
    ],
)
def test_normalize_uri(uri, expected):
    assert normalize_uri(uri) == expected


def test_get_interior_lists_children(phone):
    code, node, children = phone.get("./DevDetail")
    assert code == 200
    assert node.format == "node"
    assert set(children) >= {"DevTyp", "OEM", "FwV", "SwV", "HwV", "Ext"}


def test_get_codes(phone):
    assert phone.get("./DevInfo/Mod")[0] == 200
    assert phone.get("./Nowhere")[0] == 404
    # Secrets have no Get access.
    assert phone.get("./DMAcc/dmserver/AAuthSecret")[0] == 405
    assert phone.get(f"{FUMO}/Update/PkgData")[0] == 405
    # Queries such as ?list=Struct are an optional DM 1.2 feature.
    assert phone.get("./DevInfo?list=Struct")[0] == 406


def test_replace_codes(phone):
    assert phone.replace(f"{FUMO}/PkgName", "fw", "chr") == 200
    assert phone.tree.value(f"{FUMO}/PkgName") == "fw"
    assert phone.replace("./DevInfo/Mod", "X", "chr") == 405
    assert phone.replace(FUMO, "X", None) == 405
    assert phone.replace("./Nowhere", "X", None) == 404


def test_replace_int_rejects_text(phone):
    assert phone.add(f"{FUMO}/Ext/Severity", "1", "int", None) == 200
    assert phone.replace(f"{FUMO}/Ext/Severity", "high", None) == 400
    assert phone.replace(f"{FUMO}/Ext/Severity", "2", None) == 200


def test_replace_b64_leaf_stores_bytes(phone):
    assert phone.add(f"{FUMO}/Ext/Blob", b"\x00\xff", "b64", None) == 200
    assert (
        phone.tree.value(f"{FUMO}/Ext/Blob") == base64.b64encode(b"\x00\xff").decode()
    )


def test_replace_pkg_data_stores_package(phone):
    assert phone.replace(f"{FUMO}/Update/PkgData", b"package bytes", "bin") == 200
    assert phone.package_path.read_bytes() == b"package bytes"


def test_add_fumo_instance_creates_skeleton(phone):
    assert phone.add("./FUMO/second", None, "node", None) == 200
    children = phone.get("./FUMO/second")[2]
    assert sorted(children) == sorted(
        [
            "PkgName",
            "PkgVersion",
            "Download",
            "Update",
            "DownloadAndUpdate",
            "State",
            "Ext",
        ]
    )


def test_add_creates_missing_parents(phone):
    assert phone.add(f"{FUMO}/Ext/Carrier/Severity", "1", "int", None) == 200
    assert phone.get(f"{FUMO}/Ext/Carrier")[1].format == "node"


def test_delete_subtree(phone):
    phone.add(f"{FUMO}/Ext/Carrier/Severity", "1", "int", None)
    assert phone.delete(f"{FUMO}/Ext/Carrier") == 200
    assert phone.tree.get(f"{FUMO}/Ext/Carrier/Severity") is None
    assert phone.delete(f"{FUMO}/PkgName") == 405


def test_exec_download_and_update_queues_job(phone):
    phone.replace(f"{FUMO}/DownloadAndUpdate/PkgURL", "http://127.0.0.1/dd/1", "chr")
    assert phone.execute(f"{FUMO}/DownloadAndUpdate", "corr-1") == 202
    assert phone.pending_job == FumoJob(
        FUMO, "DownloadAndUpdate", "corr-1", "http://127.0.0.1/dd/1"
    )
    # A second operation while one is queued is rejected.
    assert phone.execute(f"{FUMO}/Download", "corr-2") == 405


def test_exec_error_codes(phone):
    assert phone.execute("./Nowhere", None) == 404
    assert phone.execute("./DevDetail/FwV", None) == 405
    # Update needs a stored package (from Download or Update/PkgData).
    assert phone.execute(f"{FUMO}/Update", None) == 405
    assert phone.pending_job is None


def test_fumo_state_setter(phone):
    phone.set_fumo_state(FumoState.DOWNLOAD_PROGRESSING)
    assert phone.fumo_state() == 30
