"""Session engine: authentication, statuses, FOTA delivery and session end.

Digests in the expected values are computed here from the formula in the
OMA DM Security specification, independently of dmserver.syncml.auth.
"""

import base64
import hashlib

import pytest

from dmserver.session import engine
from dmserver.syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr

DEVICE = "IMEI:490154203237518"
SERVER_URL = "http://127.0.0.1:8700/dm"
NONCE_1 = b"\x01" * 16
NONCE_2 = b"\x02" * 16


def spec_md5(username: str, password: str, nonce: bytes) -> str:
    inner = base64.b64encode(hashlib.md5(f"{username}:{password}".encode()).digest())
    return base64.b64encode(hashlib.md5(inner + b":" + nonce).digest()).decode()


def account(**overrides) -> engine.DeviceAccount:
    values = dict(
        device_id=DEVICE,
        client_username=DEVICE,
        client_password="client-secret",
        server_password="server-secret",
    )
    values.update(overrides)
    return engine.DeviceAccount(**values)


def context(device=None, job=None, nonce=NONCE_1) -> engine.Context:
    return engine.Context(
        device=device,
        server_id="dmserver",
        base_url="http://127.0.0.1:8700",
        session_token="tok",
        new_nonce=nonce,
        job=job,
    )


def package1(cred: Cred | None, msg_id: str = "1") -> Message:
    return Message(
        header=SyncHdr(session_id="4D2", msg_id=msg_id, target=SERVER_URL, source=DEVICE, cred=cred),
        commands=[
            Command("Alert", "1", data="1201"),
            Command(
                "Replace",
                "2",
                items=[
                    Item(source="./DevInfo/Mod", data="FP-100"),
                    Item(source="./DevInfo/Man", data="Example"),
                ],
            ),
        ],
    )


def md5_cred(nonce: bytes, password: str = "client-secret") -> Cred:
    return Cred(type="syncml:auth-md5", data=spec_md5(DEVICE, password, nonce))


def statuses(message: Message) -> list[Command]:
    return [c for c in message.commands if c.name == "Status"]


def job_offer() -> engine.JobOffer:
    return engine.JobOffer(
        job_id=7,
        token="corr-7",
        target_version="2.0",
        packages=[
            engine.PackageOffer(1, "FP-100", "1.0", "delta", 100),
            engine.PackageOffer(2, "FP-100", None, "full", 1000),
            engine.PackageOffer(3, "OTHER", "1.0", "delta", 100),
        ],
    )


def test_factory_nonce_accepted_and_next_nonce_issued():
    outcome = engine.handle(package1(md5_cred(b"null")), None, context(account()))
    header_status = outcome.reply.commands[0]
    assert header_status.cmd == "SyncHdr"
    assert header_status.cmd_ref == "0"
    assert header_status.msg_ref == "1"
    assert header_status.data == "212"
    assert header_status.chal.next_nonce == base64.b64encode(NONCE_1).decode()
    assert engine.ClientNonceIssued(NONCE_1) in outcome.effects


def test_stored_nonce_required_once_issued():
    device = account(client_nonce=NONCE_2)
    outcome = engine.handle(package1(md5_cred(b"null")), None, context(device))
    assert outcome.reply.commands[0].data == "401"
    outcome = engine.handle(package1(md5_cred(NONCE_2)), None, context(device))
    assert outcome.reply.commands[0].data == "212"


def test_every_client_command_gets_status_with_refs():
    outcome = engine.handle(package1(md5_cred(b"null")), None, context(account()))
    refs = [(s.cmd_ref, s.cmd, s.msg_ref) for s in statuses(outcome.reply)]
    assert refs == [("0", "SyncHdr", "1"), ("1", "Alert", "1"), ("2", "Replace", "1")]
    replace_status = statuses(outcome.reply)[2]
    # One Status covers both Items, so it names neither.
    assert replace_status.source_refs == []


def test_session_ends_without_job():
    outcome = engine.handle(package1(md5_cred(b"null")), None, context(account()))
    assert outcome.reply.final
    assert outcome.ended
    assert all(c.name == "Status" for c in outcome.reply.commands)
    assert outcome.reply.header.resp_uri is None


def test_wrong_password_rechallenged_once_then_session_ends():
    device = account()
    first = engine.handle(package1(md5_cred(b"null", "wrong")), None, context(device))
    assert first.reply.commands[0].data == "401"
    assert first.reply.commands[0].chal.next_nonce == base64.b64encode(NONCE_1).decode()
    assert len(first.reply.commands) == 1  # nothing executed
    assert not first.ended
    device.client_nonce = NONCE_1
    second = engine.handle(package1(md5_cred(NONCE_1, "wrong"), msg_id="2"), first.state, context(device, nonce=NONCE_2))
    assert second.reply.commands[0].data == "401"
    assert second.reply.commands[0].chal is None
    assert second.ended


def test_rechallenge_then_correct_digest_accepted():
    device = account(client_nonce=NONCE_2)
    first = engine.handle(package1(md5_cred(b"stale")), None, context(device, nonce=NONCE_1))
    assert first.reply.commands[0].data == "401"
    second = engine.handle(package1(md5_cred(NONCE_1), msg_id="2"), first.state, context(device, nonce=NONCE_2))
    assert second.reply.commands[0].data == "212"


def test_missing_credentials_get_407_with_chal():
    outcome = engine.handle(package1(None), None, context(account()))
    assert outcome.reply.commands[0].data == "407"
    assert outcome.reply.commands[0].chal.type == "syncml:auth-md5"


def test_unknown_device_rejected_without_chal():
    outcome = engine.handle(package1(md5_cred(b"null")), None, context(None))
    assert outcome.reply.commands[0].data == "401"
    assert outcome.reply.commands[0].chal is None
    assert outcome.ended
    assert any(isinstance(e, engine.AuthenticationFailed) for e in outcome.effects)


def test_server_cred_uses_server_password_and_nonce():
    device = account(server_nonce=b"srv-nonce")
    outcome = engine.handle(package1(md5_cred(b"null")), None, context(device, job=job_offer()))
    cred = outcome.reply.header.cred
    assert cred.type == "syncml:auth-md5"
    assert cred.data == spec_md5("dmserver", "server-secret", b"srv-nonce")


def test_fota_delivery_flow():
    device = account()
    first = engine.handle(package1(md5_cred(b"null")), None, context(device, job=job_offer()))
    gets = [c for c in first.reply.commands if c.name == "Get"]
    assert [g.items[0].target for g in gets] == ["./DevDetail/FwV", "./FUMO"]
    assert not first.ended
    assert first.reply.header.resp_uri == "http://127.0.0.1:8700/dm?s=tok"

    answers = Message(
        header=SyncHdr(session_id="4D2", msg_id="2", target=SERVER_URL, source=DEVICE),
        commands=[
            Command("Status", "1", msg_ref="1", cmd_ref="0", cmd="SyncHdr", data="212"),
            Command("Status", "2", msg_ref="1", cmd_ref=gets[0].cmd_id, cmd="Get", data="200"),
            Command("Results", "3", msg_ref="1", cmd_ref=gets[0].cmd_id, items=[Item(source="./DevDetail/FwV", data="1.0")]),
            Command("Status", "4", msg_ref="1", cmd_ref=gets[1].cmd_id, cmd="Get", data="200"),
            Command("Results", "5", msg_ref="1", cmd_ref=gets[1].cmd_id, items=[Item(source="./FUMO", meta=Meta(format="node"), data="fw%201")]),
        ],
    )
    second = engine.handle(answers, first.state, context(device, job=job_offer()))
    replace = next(c for c in second.reply.commands if c.name == "Replace")
    execute = next(c for c in second.reply.commands if c.name == "Exec")
    assert replace.items[0].target == "./FUMO/fw 1/DownloadAndUpdate/PkgURL"
    assert replace.items[0].data == "http://127.0.0.1:8700/dl/dd/corr-7"
    assert execute.items[0].target == "./FUMO/fw 1/DownloadAndUpdate"
    assert execute.correlator == "corr-7"
    delivered = next(e for e in second.effects if isinstance(e, engine.JobDelivered))
    assert delivered.package_id == 1  # the delta from 1.0 for model FP-100
    # No Status is sent for the client's Status and Results commands.
    assert [c.cmd_ref for c in statuses(second.reply)] == ["0"]

    acks = Message(
        header=SyncHdr(session_id="4D2", msg_id="3", target=SERVER_URL, source=DEVICE),
        commands=[
            Command("Status", "1", msg_ref="2", cmd_ref="0", cmd="SyncHdr", data="200"),
            Command("Status", "2", msg_ref="2", cmd_ref=replace.cmd_id, cmd="Replace", data="200"),
            Command("Status", "3", msg_ref="2", cmd_ref=execute.cmd_id, cmd="Exec", data="202"),
        ],
    )
    third = engine.handle(acks, second.state, context(device, job=job_offer()))
    assert engine.JobStatusReceived(7, "exec-update", 202) in third.effects
    assert third.ended
    assert third.reply.final


def test_generic_alert_reported_as_effect():
    message = package1(md5_cred(b"null"))
    message.commands.append(
        Command(
            "Alert",
            "3",
            data="1226",
            correlator="corr-7",
            items=[
                Item(
                    source="./FUMO/fw1/DownloadAndUpdate",
                    meta=Meta(type="Reversed-Domain-Name: org.openmobilealliance.dm.firmwareupdate.downloadandupdate", format="int"),
                    data="200",
                )
            ],
        )
    )
    outcome = engine.handle(message, None, context(account()))
    alert = next(e for e in outcome.effects if isinstance(e, engine.GenericAlertReceived))
    assert alert.alert_type == "org.openmobilealliance.dm.firmwareupdate.downloadandupdate"
    assert alert.data == "200"
    assert alert.correlator == "corr-7"
    assert statuses(outcome.reply)[-1].data == "200"


def test_non_final_message_asks_for_next():
    message = package1(md5_cred(b"null"))
    message.final = False
    outcome = engine.handle(message, None, context(account()))
    assert not outcome.reply.final
    assert any(c.name == "Alert" and c.data == "1222" for c in outcome.reply.commands)


def test_client_get_answered_not_supported():
    message = package1(md5_cred(b"null"))
    message.commands.append(Command("Get", "3", items=[Item(target="./x")]))
    outcome = engine.handle(message, None, context(account()))
    assert statuses(outcome.reply)[-1].data == "406"


def test_device_at_target_version_closes_job():
    device = account()
    first = engine.handle(package1(md5_cred(b"null")), None, context(device, job=job_offer()))
    gets = [c for c in first.reply.commands if c.name == "Get"]
    answers = Message(
        header=SyncHdr(session_id="4D2", msg_id="2", target=SERVER_URL, source=DEVICE),
        commands=[
            Command("Results", "1", msg_ref="1", cmd_ref=gets[0].cmd_id, items=[Item(source="./DevDetail/FwV", data="2.0")]),
            Command("Results", "2", msg_ref="1", cmd_ref=gets[1].cmd_id, items=[Item(source="./FUMO", data="x")]),
        ],
    )
    second = engine.handle(answers, first.state, context(device, job=job_offer()))
    assert engine.JobAlreadyAtTarget(7, "2.0") in second.effects
    assert second.ended


@pytest.mark.parametrize(
    "source_version, model, expected",
    [("1.0", "FP-100", 1), ("0.9", "FP-100", 2), ("1.0", "OTHER", 3), ("0.9", "OTHER", None)],
)
def test_choose_package(source_version, model, expected):
    chosen = engine.choose_package(job_offer().packages, model, source_version)
    assert (chosen.package_id if chosen else None) == expected


def test_management_request_sent_and_statuses_reported():
    device = account()
    request = engine.ManagementRequest(
        5,
        [
            Command("Get", "", items=[Item(target="./DevInfo/Mod")]),
            Command(
                "Atomic",
                "",
                commands=[
                    Command("Replace", "", items=[Item(target="./A", data="1")]),
                    Command("Delete", "", items=[Item(target="./B")]),
                ],
            ),
        ],
    )
    ctx = context(device)
    ctx.management = [request]
    first = engine.handle(package1(md5_cred(b"null")), None, ctx)
    assert engine.ManagementSent(5) in first.effects
    sent = [c for c in first.reply.commands if c.name != "Status"]
    assert [c.name for c in sent] == ["Get", "Atomic"]
    atomic = sent[1]
    ids = [c.cmd_id for c in first.reply.commands] + [c.cmd_id for c in atomic.commands]
    # CmdIDs are unique in the message, nested commands included.
    assert len(set(ids)) == len(ids)
    replace, delete = atomic.commands

    answers = Message(
        header=SyncHdr(session_id="4D2", msg_id="2", target=SERVER_URL, source=DEVICE),
        commands=[
            Command("Status", "1", msg_ref="1", cmd_ref=sent[0].cmd_id, cmd="Get", data="200", target_refs=["./DevInfo/Mod"]),
            Command("Results", "2", msg_ref="1", cmd_ref=sent[0].cmd_id, items=[Item(source="./DevInfo/Mod", data="FP-100")]),
            Command("Status", "3", msg_ref="1", cmd_ref=atomic.cmd_id, cmd="Atomic", data="507"),
            Command("Status", "4", msg_ref="1", cmd_ref=replace.cmd_id, cmd="Replace", data="216", target_refs=["./A"]),
            Command("Status", "5", msg_ref="1", cmd_ref=delete.cmd_id, cmd="Delete", data="404", target_refs=["./B"]),
        ],
    )
    second = engine.handle(answers, first.state, context(device))
    results = [e for e in second.effects if isinstance(e, engine.ManagementResult)]
    assert [(r.kind, r.cmd, r.code, r.target) for r in results] == [
        ("Status", "Get", 200, "./DevInfo/Mod"),
        ("Results", "Get", None, None),
        ("Status", "Atomic", 507, None),
        ("Status", "Replace", 216, "./A"),
        ("Status", "Delete", 404, "./B"),
    ]
    assert results[1].items[0]["data"] == "FP-100"
    assert engine.ManagementCompleted(5) in second.effects
    assert second.ended


def test_interior_node_children_percent_decoded():
    item = Item(source="./Vendor", meta=Meta(format="node"), data="a%20b/c%2Fd/e")
    assert engine._item_json(item)["children"] == ["a b", "c/d", "e"]


def test_duplicate_cmd_ids_answered_one_by_one():
    message = package1(md5_cred(b"null"))
    message.commands.append(Command("Replace", "2", items=[Item(source="./DevInfo/Lang", data="en")]))
    outcome = engine.handle(message, None, context(account()))
    refs = [(s.cmd_ref, s.cmd, s.source_refs) for s in statuses(outcome.reply)][1:]
    assert refs == [("1", "Alert", []), ("2", "Replace", []), ("2", "Replace", ["./DevInfo/Lang"])]


def discovery_answers(first, values: dict[str, str | None]) -> Message:
    """Build the client's reply to every Get of ``first``: a value, or 404 for None."""
    commands = []
    for get in (c for c in first.reply.commands if c.name == "Get"):
        target = get.items[0].target
        value = values.get(target)
        number = str(len(commands) + 1)
        if value is None:
            commands.append(Command("Status", number, msg_ref="1", cmd_ref=get.cmd_id, cmd="Get", data="404"))
        else:
            commands.append(Command("Status", number, msg_ref="1", cmd_ref=get.cmd_id, cmd="Get", data="200"))
            commands.append(Command("Results", number + "r", msg_ref="1", cmd_ref=get.cmd_id, items=[Item(source=target, data=value)]))
    return Message(header=SyncHdr(session_id="4D2", msg_id="2", target=SERVER_URL, source=DEVICE), commands=commands)


@pytest.mark.parametrize(
    "battery, free, expect_deferred",
    [("15", "100000", "battery"), ("80", "150", "storage"), ("80", "100000", None), (None, None, None)],
)
def test_campaign_policy_checked_before_exec(battery, free, expect_deferred):
    from dmserver.campaign.spec import Policy

    policy = Policy(min_battery=30, storage_factor=2.0, severity=2)
    ctx = context(account(), job=job_offer())
    ctx.policy = policy
    first = engine.handle(package1(md5_cred(b"null")), None, ctx)
    targets = [c.items[0].target for c in first.reply.commands if c.name == "Get"]
    assert "./DevDetail/Ext/Battery" in targets
    assert "./DevDetail/Ext/FreeMem" in targets
    values = {
        "./DevDetail/FwV": "1.0",
        "./FUMO": "x",
        "./DevDetail/Ext/Battery": battery,
        "./DevDetail/Ext/FreeMem": free,
    }
    ctx = context(account(), job=job_offer())
    ctx.policy = policy
    second = engine.handle(discovery_answers(first, values), first.state, ctx)
    deferred = [e for e in second.effects if isinstance(e, engine.JobDeferred)]
    execs = [c for c in second.reply.commands if c.name == "Exec"]
    if expect_deferred:
        assert [d.reason for d in deferred] == [expect_deferred]
        assert execs == []
    else:
        assert deferred == []
        assert len(execs) == 1
