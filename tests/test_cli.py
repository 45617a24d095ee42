"""The dmserver command line: bad input gets one clear line and exit status 2,
and nothing already stored is lost."""

from .conftest import MODEL, NEW_IMAGE, NEW_VERSION, OLD_IMAGE, OLD_VERSION, dmserver_cli


def test_keys_init_refuses_to_overwrite(tmp_path):
    data = tmp_path / "data"
    dmserver_cli(data, "keys", "init")
    key = (data / "keys" / "signing-key.pem").read_bytes()
    again = dmserver_cli(data, "keys", "init", check=False)
    assert again.returncode == 2
    assert "--force" in again.stderr
    assert (data / "keys" / "signing-key.pem").read_bytes() == key


def test_firmware_add_errors(tmp_path):
    data = tmp_path / "data"
    no_key = dmserver_cli(data, "firmware", "add", "--model", MODEL, "--version", "1", str(OLD_IMAGE), check=False)
    assert no_key.returncode == 2
    assert "keys init" in no_key.stderr
    dmserver_cli(data, "keys", "init")
    missing = dmserver_cli(data, "firmware", "add", "--model", MODEL, "--version", "1", str(tmp_path / "nope.bin"), check=False)
    assert missing.returncode == 2
    assert "nope.bin" in missing.stderr
    dmserver_cli(data, "firmware", "add", "--model", MODEL, "--version", OLD_VERSION, str(OLD_IMAGE))
    duplicate = dmserver_cli(data, "firmware", "add", "--model", MODEL, "--version", OLD_VERSION, str(NEW_IMAGE), check=False)
    assert duplicate.returncode == 2
    assert OLD_VERSION in duplicate.stderr
    listing = dmserver_cli(data, "firmware", "list").stdout
    assert listing.count(OLD_VERSION) == 1


def test_device_import_csv(tmp_path):
    data = tmp_path / "data"
    good = tmp_path / "devices.csv"
    good.write_text(
        "device_id,client_password,server_password,auth,model\n"
        "IMEI:111111111111111,c1,s1,md5,FP-100\n"
        "IMEI:222222222222222,c2,s2,hmac,FP-100\n"
    )
    dmserver_cli(data, "device", "import", str(good))
    listing = dmserver_cli(data, "device", "list").stdout
    assert "IMEI:111111111111111" in listing
    assert "IMEI:222222222222222" in listing

    bad_column = tmp_path / "bad.csv"
    bad_column.write_text("device,client_password\nIMEI:3,c\n")
    result = dmserver_cli(data, "device", "import", str(bad_column), check=False)
    assert result.returncode == 2
    assert "device_id" in result.stderr

    # One bad row rejects the whole file and keeps what was stored.
    bad_row = tmp_path / "badrow.csv"
    bad_row.write_text(
        "device_id,client_password,server_password,auth\n"
        "IMEI:333333333333333,c,s,md5\n"
        "IMEI:444444444444444,c,s,kerberos\n"
    )
    result = dmserver_cli(data, "device", "import", str(bad_row), check=False)
    assert result.returncode == 2
    assert "badrow.csv:3" in result.stderr
    assert "kerberos" in result.stderr
    listing = dmserver_cli(data, "device", "list").stdout
    assert "IMEI:333333333333333" not in listing
    assert "IMEI:111111111111111" in listing


def test_job_fota_errors(tmp_path):
    data = tmp_path / "data"
    dmserver_cli(data, "keys", "init")
    dmserver_cli(data, "device", "add", "IMEI:5", "--client-password", "c", "--server-password", "s")
    unknown = dmserver_cli(data, "job", "fota", "IMEI:6", "--version", NEW_VERSION, check=False)
    assert "not provisioned" in unknown.stderr
    no_package = dmserver_cli(data, "job", "fota", "IMEI:5", "--version", NEW_VERSION, check=False)
    assert "firmware add" in no_package.stderr
    dmserver_cli(data, "firmware", "add", "--model", MODEL, "--version", NEW_VERSION, str(NEW_IMAGE))
    dmserver_cli(data, "job", "fota", "IMEI:5", "--version", NEW_VERSION)
    second = dmserver_cli(data, "job", "fota", "IMEI:5", "--version", NEW_VERSION, check=False)
    assert second.returncode == 2
    assert "job cancel 1" in second.stderr
    dmserver_cli(data, "job", "cancel", "1")
    assert "cancelled" in dmserver_cli(data, "job", "list").stdout


def test_decode_rejects_non_syncml(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x03\x01\x6a\x00\xff\xff")
    result = dmserver_cli(tmp_path / "data", "decode", str(junk), check=False)
    assert result.returncode == 2
    assert "junk.bin" in result.stderr


def test_device_import_spreadsheet_quirks(tmp_path):
    data = tmp_path / "data"
    bom = tmp_path / "bom.csv"
    bom.write_bytes(
        b"\xef\xbb\xbfdevice_id,client_password,server_password,group,carrier_tag,timezone\r\n"
        b"IMEI:555555555555555,c,s,pilot,acme,Europe/Berlin\r\n"
    )
    dmserver_cli(data, "device", "import", str(bom))
    assert "IMEI:555555555555555" in dmserver_cli(data, "device", "list").stdout

    typo = tmp_path / "typo.csv"
    typo.write_text("device_id,client_password,server_password,modle\nIMEI:6,c,s,FP\n")
    result = dmserver_cli(data, "device", "import", str(typo), check=False)
    assert result.returncode == 2
    assert "unknown column(s) modle" in result.stderr

    latin = tmp_path / "latin.csv"
    latin.write_bytes("device_id,client_password,server_password\nIMEI:7,pässword,s\n".encode("latin-1"))
    result = dmserver_cli(data, "device", "import", str(latin), check=False)
    assert result.returncode == 2
    assert "not UTF-8" in result.stderr

    zone = dmserver_cli(data, "device", "add", "IMEI:8", "--client-password", "c", "--server-password", "s", "--timezone", "Mars/Olympus", check=False)
    assert zone.returncode == 2
    assert "Mars/Olympus" in zone.stderr
