"""Engine output under a small MaxMsgSize: paging, large objects, in-band FOTA."""

import base64
import hashlib
import os

import pytest

from dmserver.session import engine
from dmserver.syncml.codec import Encoding, decode_message, encode_message
from dmserver.syncml.model import Command, Cred, Item, Message, Meta, SyncHdr

DEVICE = "IMEI:490154203237518"
SERVER_URL = "http://127.0.0.1:8700/dm"
PACKAGE = os.urandom(10_000)


def spec_md5(username: str, password: str, nonce: bytes) -> str:
    inner = base64.b64encode(hashlib.md5(f"{username}:{password}".encode()).digest())
    return base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()


def make_context(encoding, delivery="inband"):
    device = engine.DeviceAccount(
        device_id=DEVICE,
        client_username=DEVICE,
        client_password="pw",
        server_password="spw",
        delivery=delivery,
    )
    job = engine.JobOffer(
        job_id=1,
        token="corr",
        target_version="2",
        packages=[engine.PackageOffer(9, "FP", "1", "delta", len(PACKAGE))],
    )
    return engine.Context(
        device=device,
        server_id="dmserver",
        base_url="http://127.0.0.1:8700",
        session_token="tok",
        new_nonce=b"n" * 16,
        job=job,
        encode=lambda message: encode_message(message, encoding),
        read_object=lambda source, offset, length: PACKAGE[offset : offset + length],
    )


def header(msg_id: int, max_msg_size: int, cred=None, max_obj_size=None) -> SyncHdr:
    return SyncHdr(
        session_id="1",
        msg_id=str(msg_id),
        target=SERVER_URL,
        source=DEVICE,
        cred=cred,
        meta=Meta(max_msg_size=max_msg_size, max_obj_size=max_obj_size),
    )


def answer(reply: Message, msg_id: int, max_msg_size: int, tree: dict) -> Message:
    """A minimal client: Status for each command, Results for Gets, 213 for chunks."""
    commands = [Command("Status", "1", msg_ref=reply.header.msg_id, cmd_ref="0", cmd="SyncHdr", data="200")]
    for command in reply.commands:
        if command.name == "Status":
            continue
        code = "200"
        if command.name == "Exec":
            code = "202"
        if command.items and command.items[0].more_data:
            code = "213"
        number = str(len(commands) + 1)
        commands.append(Command("Status", number, msg_ref=reply.header.msg_id, cmd_ref=command.cmd_id, cmd=command.name, data=code))
        if command.name == "Get":
            target = command.items[0].target
            commands.append(Command("Results", str(len(commands) + 1), msg_ref=reply.header.msg_id, cmd_ref=command.cmd_id, items=[Item(source=target, data=tree[target])]))
    if reply.final is False and len(commands) == 1:
        commands.append(Command("Alert", "2", data="1222"))
    return Message(header=header(msg_id, max_msg_size), commands=commands)


@pytest.mark.parametrize("encoding", [Encoding.XML, Encoding.WBXML])
@pytest.mark.parametrize("limit", [1500, 3500])
def test_inband_delivery_respects_max_msg_size(encoding, limit):
    ctx = make_context(encoding)
    tree = {"./DevDetail/FwV": "1", "./FUMO": "x"}
    message = Message(
        header=header(1, limit, Cred("syncml:auth-md5", spec_md5(DEVICE, "pw", b"null"))),
        commands=[Command("Alert", "1", data="1201"), Command("Replace", "2", items=[Item(source="./DevInfo/Mod", data="FP")])],
    )
    state = None
    received = b""
    chunks = 0
    sizes = []
    execs = []
    for msg_id in range(1, 200):
        outcome = engine.handle(message, state, ctx)
        wire = encode_message(outcome.reply, encoding)
        sizes.append(len(wire))
        reply = outcome.reply
        for command in reply.commands:
            if command.name == "Replace" and command.items[0].target.endswith("/Update/PkgData"):
                item = command.items[0]
                if chunks == 0:
                    assert item.meta.size == len(PACKAGE)
                else:
                    assert item.meta is None or item.meta.size is None
                chunks += 1
                received += item.data
            if command.name == "Exec":
                execs.append(command)
        state = outcome.state
        if outcome.ended:
            break
        message = answer(reply, msg_id + 1, limit, tree)
    assert max(sizes) <= limit
    assert received == PACKAGE
    assert chunks > 1
    assert len(execs) == 1
    assert execs[0].items[0].target == "./FUMO/x/Update"
    assert execs[0].correlator == "corr"


def test_package_above_max_obj_size_fails_job():
    ctx = make_context(Encoding.XML)
    tree = {"./DevDetail/FwV": "1", "./FUMO": "x"}
    message = Message(
        header=header(1, 3500, Cred("syncml:auth-md5", spec_md5(DEVICE, "pw", b"null")), max_obj_size=5000),
        commands=[Command("Alert", "1", data="1201")],
    )
    first = engine.handle(message, None, ctx)
    second = engine.handle(answer(first.reply, 2, 3500, tree), first.state, ctx)
    failures = [e for e in second.effects if isinstance(e, engine.JobFailed)]
    assert len(failures) == 1
    assert "MaxObjSize 5000" in failures[0].reason


def test_chunk_error_status_fails_job():
    ctx = make_context(Encoding.XML)
    tree = {"./DevDetail/FwV": "1", "./FUMO": "x"}
    message = Message(header=header(1, 2000, Cred("syncml:auth-md5", spec_md5(DEVICE, "pw", b"null"))), commands=[Command("Alert", "1", data="1201")])
    first = engine.handle(message, None, ctx)
    second = engine.handle(answer(first.reply, 2, 2000, tree), first.state, ctx)
    chunk = next(c for c in second.reply.commands if c.name == "Replace")
    assert chunk.items[0].more_data
    refusal = Message(
        header=header(3, 2000),
        commands=[
            Command("Status", "1", msg_ref="2", cmd_ref="0", cmd="SyncHdr", data="200"),
            Command("Status", "2", msg_ref="2", cmd_ref=chunk.cmd_id, cmd="Replace", data="420"),
        ],
    )
    third = engine.handle(refusal, second.state, ctx)
    assert engine.JobStatusReceived(1, "replace-pkgdata", 420) in third.effects
    assert third.ended


def large_results(chunks: list[bytes], size: int | None, msg_start: int = 2):
    messages = []
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        meta = Meta(format="chr", size=size) if number == 0 else None
        messages.append(
            Message(
                header=header(msg_start + number, 3500),
                commands=[Command("Replace", "1", items=[Item(source="./Vendor/Log", meta=meta, data=chunk.decode(), more_data=not last)])],
                final=last,
            )
        )
    return messages


def authenticated_state(ctx):
    message = Message(header=header(1, 3500, Cred("syncml:auth-md5", spec_md5(DEVICE, "pw", b"null"))), commands=[Command("Alert", "1", data="1201")])
    ctx.job = None
    outcome = engine.handle(message, None, ctx)
    outcome.state.ended = False
    return outcome.state


def test_incoming_large_object_reassembled():
    ctx = make_context(Encoding.XML)
    state = authenticated_state(ctx)
    parts = [b"a" * 100, b"b" * 100, b"c" * 50]
    codes = []
    values = None
    for message in large_results(parts, 250):
        outcome = engine.handle(message, state, ctx)
        state = outcome.state
        codes += [c.data for c in outcome.reply.commands if c.name == "Status" and c.cmd_ref == "1"]
        for effect in outcome.effects:
            if isinstance(effect, engine.TreeValuesReceived):
                values = effect.values
    assert codes == ["213", "213", "200"]
    assert values == {"./Vendor/Log": (200, "a" * 100 + "b" * 100 + "c" * 50)}


def test_incoming_large_object_size_mismatch_is_424():
    ctx = make_context(Encoding.XML)
    state = authenticated_state(ctx)
    codes = []
    for message in large_results([b"a" * 100, b"b" * 10], 250):
        outcome = engine.handle(message, state, ctx)
        state = outcome.state
        codes += [c.data for c in outcome.reply.commands if c.name == "Status" and c.cmd_ref == "1"]
    assert codes == ["213", "424"]


def test_incoming_object_above_max_obj_size_is_413():
    ctx = make_context(Encoding.XML)
    ctx.server_max_obj_size = 1000
    state = authenticated_state(ctx)
    outcome = engine.handle(large_results([b"a" * 100, b"b"], 5000)[0], state, ctx)
    assert [c.data for c in outcome.reply.commands if c.cmd_ref == "1"] == ["413"]


def test_interrupted_large_object_gets_alert_1225():
    ctx = make_context(Encoding.XML)
    state = authenticated_state(ctx)
    first = large_results([b"a" * 100, b"b"], 101)[0]
    state = engine.handle(first, state, ctx).state
    other = Message(header=header(3, 3500), commands=[Command("Alert", "1", data="1201")])
    outcome = engine.handle(other, state, ctx)
    alerts = [c for c in outcome.reply.commands if c.name == "Alert"]
    assert [a.data for a in alerts] == ["1225"]
    assert alerts[0].items[0].target == "./Vendor/Log"


def test_base64_text_nonce_form_detected():
    ctx = make_context(Encoding.XML)
    ctx.device.client_nonce = b"\x01\x02\x03\x04"
    text_form = base64.b64encode(b"\x01\x02\x03\x04")
    message = Message(header=header(1, 3500, Cred("syncml:auth-md5", spec_md5(DEVICE, "pw", text_form))), commands=[])
    outcome = engine.handle(message, None, ctx)
    assert outcome.reply.commands[0].data == "212"
    assert engine.NonceFormDetected("base64-text") in outcome.effects


def test_hmac_required_on_every_message():
    from dmserver.syncml import auth as syncml_auth

    ctx = make_context(Encoding.XML, delivery="download")
    ctx.device.auth_scheme = "syncml:auth-MAC"
    ctx.job = None
    body = b"<first/>"
    ctx.body = body
    ctx.hmac = syncml_auth.HmacHeader(DEVICE, syncml_auth.hmac_mac(DEVICE, "pw", b"null", body))
    first = engine.handle(Message(header=header(1, 3500), commands=[Command("Alert", "1", data="1201")], final=False), None, ctx)
    assert first.reply.commands[0].data == "212"
    ctx.hmac = None
    second = engine.handle(
        Message(header=header(2, 3500), commands=[Command("Replace", "1", items=[Item(source="./DevInfo/Mod", data="EVIL")])]),
        first.state,
        ctx,
    )
    assert second.reply.commands[0].data == "407"
    assert not any(isinstance(e, engine.DeviceInfoReceived) for e in second.effects)


def test_large_object_beyond_declared_size_is_424_at_once():
    ctx = make_context(Encoding.XML)
    state = authenticated_state(ctx)
    messages = large_results([b"a" * 100, b"b" * 100, b"c"], 150)
    codes = []
    for message in messages[:2]:
        outcome = engine.handle(message, state, ctx)
        state = outcome.state
        codes += [c.data for c in outcome.reply.commands if c.name == "Status" and c.cmd_ref == "1"]
    assert codes == ["213", "424"]
    assert state.large_in is None


def test_command_that_never_fits_is_dropped_not_stalled():
    ctx = make_context(Encoding.XML)
    ctx.job = None
    huge = Command("Get", "", items=[Item(target="./Vendor/" + "A" * 1600)])
    ctx.management = [engine.ManagementRequest(3, [huge])]
    message = Message(header=header(1, 1500, Cred("syncml:auth-md5", spec_md5(DEVICE, "pw", b"null"))), commands=[Command("Alert", "1", data="1201")])
    outcome = engine.handle(message, None, ctx)
    not_sent = [e for e in outcome.effects if isinstance(e, engine.ManagementResult)]
    assert [(e.kind, e.code) for e in not_sent] == [("NotSent", 413)]
    assert outcome.state.outbox == []
