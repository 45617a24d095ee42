"""XML codec: spec-shaped messages, lenient reading, hostile input."""

import pytest
from lxml import etree

from dmserver.syncml.codec import CodecError, Encoding, decode_message, encode_message
from dmserver.syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr

XML = "application/vnd.syncml.dm+xml"

# Package 1 in the shape of the OMA DM 1.2 protocol examples, with the quirks
# of real clients: MetInf without a namespace on one element, a misspelled
# namespace on another, whitespace around values and an upper-case Format.
PACKAGE1 = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE SyncML PUBLIC "-//SYNCML//DTD SyncML 1.2//EN" "http://www.openmobilealliance.org/tech/DTD/OMA-TS-SyncML_RepPro_DTD-V1_2.dtd">
<SyncML xmlns="SYNCML:SYNCML1.2">
  <SyncHdr>
    <VerDTD>1.2</VerDTD>
    <VerProto>DM/1.2</VerProto>
    <SessionID>1</SessionID>
    <MsgID>1</MsgID>
    <Target><LocURI>http://www.syncml.org/mgmt-server</LocURI></Target>
    <Source><LocURI> IMEI:493005100592800 </LocURI></Source>
    <Cred>
      <Meta><Type xmlns="syncml:metinf">syncml:auth-md5</Type><Format xmlns="syncml:metinf">b64</Format></Meta>
      <Data>Zz6EivR3yeaaENcRN6lpAQ==</Data>
    </Cred>
    <Meta><MaxMsgSize>5000</MaxMsgSize></Meta>
  </SyncHdr>
  <SyncBody>
    <Alert><CmdID>1</CmdID><Data>1201</Data></Alert>
    <Replace>
      <CmdID>3</CmdID>
      <Item><Source><LocURI>./DevInfo/DevId</LocURI></Source><Meta><Format xmlns="syncml:metlnf">CHR</Format></Meta><Data>IMEI:493005100592800</Data></Item>
      <Item><Source><LocURI>./DevInfo/Man</LocURI></Source><Data>  Device Factory, Inc. </Data></Item>
    </Replace>
    <Final/>
  </SyncBody>
</SyncML>
"""


def test_package1_decoded_values():
    decoded = decode_message(PACKAGE1, "application/vnd.syncml.dm+xml; charset=UTF-8")
    message = decoded.message
    assert decoded.encoding is Encoding.XML
    assert message.header.source == "IMEI:493005100592800"
    assert message.header.meta.max_msg_size == 5000
    assert message.header.cred.type == "syncml:auth-md5"
    assert message.header.cred.data == "Zz6EivR3yeaaENcRN6lpAQ=="
    assert [c.name for c in message.commands] == ["Alert", "Replace"]
    assert message.commands[0].data == "1201"
    assert message.commands[1].items[0].meta.format == "CHR"
    assert message.commands[1].items[1].data == "Device Factory, Inc."
    assert message.final
    assert message.dm_version == "1.2"


@pytest.mark.parametrize("media_type", ["application/vnd.syncml+xml", "APPLICATION/VND.SYNCML.DM+XML;charset=utf-8"])
def test_media_types_accepted_and_reply_family_kept(media_type):
    decoded = decode_message(PACKAGE1, media_type)
    assert decoded.media_type == media_type.split(";")[0].lower()


def test_unknown_media_type_is_415():
    with pytest.raises(CodecError) as error:
        decode_message(PACKAGE1, "text/plain")
    assert error.value.status == 415


@pytest.mark.parametrize(
    "body",
    [
        b"<SyncML><SyncHdr>",
        b'<!DOCTYPE SyncML [<!ENTITY x "y">]><SyncML>&x;</SyncML>',
        b"<!DOCTYPE SyncML [<!ELEMENT SyncML ANY>]><SyncML/>",
        b"<SyncML>&undefined;</SyncML>",
        b"<Other/>",
        b"<SyncML><SyncHdr><VerDTD>1.2</VerDTD></SyncHdr><SyncBody/></SyncML>",
        b"<SyncML>" + b"<a>" * 100 + b"</a>" * 100 + b"</SyncML>",
    ],
)
def test_hostile_or_broken_xml_is_400(body):
    with pytest.raises(CodecError) as error:
        decode_message(body, XML)
    assert error.value.status == 400


def full_message() -> Message:
    return Message(
        header=SyncHdr(
            session_id="1",
            msg_id="2",
            target="IMEI:1",
            source="http://server/dm",
            resp_uri="http://server/dm?s=abc",
            cred=Cred(type="syncml:auth-md5", data="abc=="),
            meta=Meta(max_msg_size=9000, max_obj_size=100000),
        ),
        commands=[
            Command("Status", "1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", target_refs=["http://server/dm"], source_refs=["IMEI:1"], data="212", chal=Chal(type="syncml:auth-md5", next_nonce="AQID")),
            Command("Replace", "2", items=[Item(target="./FUMO/x/DownloadAndUpdate/PkgURL", meta=Meta(format="chr", type="text/plain"), data="http://server/dl/dd/t")]),
            Command("Exec", "3", correlator="c1", items=[Item(target="./FUMO/x/DownloadAndUpdate")]),
            Command("Atomic", "4", commands=[Command("Add", "5", items=[Item(target="./a", data=b"\x00\xffbinary")]), Command("Delete", "6", items=[Item(target="./b")])]),
            Command("Alert", "7", data="1226", correlator="c2", items=[Item(source="./FUMO/x", meta=Meta(type="org.openmobilealliance.dm.firmwareupdate.downloadandupdate", format="int"), data="200")]),
        ],
        final=True,
    )


def test_round_trip_through_xml():
    message = full_message()
    decoded = decode_message(encode_message(message, Encoding.XML), XML).message
    # Binary data is relabelled b64 in XML; everything else is unchanged.
    decoded.commands[3].commands[0].items[0].meta = None
    assert decoded == message


def test_xml_output_follows_dtd_order():
    root = etree.fromstring(encode_message(full_message(), Encoding.XML))
    ns = {"s": "SYNCML:SYNCML1.2"}
    header = [etree.QName(e).localname for e in root.find("s:SyncHdr", ns)]
    assert header == ["VerDTD", "VerProto", "SessionID", "MsgID", "Target", "Source", "RespURI", "Cred", "Meta"]
    status = [etree.QName(e).localname for e in root.find("s:SyncBody/s:Status", ns)]
    assert status == ["CmdID", "MsgRef", "CmdRef", "Cmd", "TargetRef", "SourceRef", "Chal", "Data"]
    execute = [etree.QName(e).localname for e in root.find("s:SyncBody/s:Exec", ns)]
    assert execute == ["CmdID", "Correlator", "Item"]


def test_binary_data_is_base64_and_no_control_characters():
    body = encode_message(full_message(), Encoding.XML)
    assert b"\x00" not in body
    assert b"<Data>AP9iaW5hcnk=</Data>" in body
    assert b">b64<" in body
