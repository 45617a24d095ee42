"""Property tests: random valid messages round-trip through XML and WBXML."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dmserver.syncml.codec import Encoding, decode_message, encode_message
from dmserver.syncml.model import Chal, Command, Cred, Item, Message, Meta, SyncHdr

# Text that survives XML: no control characters, no surrogates, trimmed
# (readers trim whitespace around values, as real clients need).
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    min_size=1,
    max_size=30,
).map(str.strip).filter(bool)
uri = st.from_regex(r"\./[A-Za-z0-9]{1,8}(/[A-Za-z0-9%]{1,8}){0,3}", fullmatch=True)
number = st.integers(min_value=1, max_value=10**6).map(str)

metas = st.builds(
    Meta,
    format=st.sampled_from([None, "chr", "int", "node"]),
    type=st.one_of(st.none(), text),
    size=st.one_of(st.none(), st.integers(0, 10**9)),
).map(lambda m: None if m.is_empty() else m)

items = st.builds(
    Item,
    target=st.one_of(st.none(), uri),
    source=st.one_of(st.none(), uri),
    meta=metas,
    data=st.one_of(st.none(), text),
    more_data=st.booleans(),
)
binary_items = st.builds(Item, target=uri, data=st.binary(min_size=1, max_size=64))


def simple_command(name):
    return st.builds(
        Command,
        name=st.just(name),
        cmd_id=number,
        items=st.lists(st.one_of(items, binary_items) if name in ("Replace", "Add") else items, min_size=1, max_size=3),
        no_resp=st.booleans(),
    )


statuses = st.builds(
    Command,
    name=st.just("Status"),
    cmd_id=number,
    msg_ref=number,
    cmd_ref=number,
    cmd=st.sampled_from(["SyncHdr", "Alert", "Replace", "Get"]),
    data=st.sampled_from(["200", "212", "401", "404", "213"]),
    target_refs=st.lists(uri, max_size=1),
    source_refs=st.lists(uri, max_size=1),
    chal=st.one_of(st.none(), st.builds(Chal, type=st.just("syncml:auth-md5"), next_nonce=st.just("AAECAw=="))),
)
alerts = st.builds(Command, name=st.just("Alert"), cmd_id=number, data=st.sampled_from(["1201", "1222", "1226"]), correlator=st.one_of(st.none(), text))
execs = st.builds(Command, name=st.just("Exec"), cmd_id=number, correlator=st.one_of(st.none(), text), items=st.lists(st.builds(Item, target=uri), min_size=1, max_size=1))
leaf_commands = st.one_of(statuses, alerts, execs, *(simple_command(n) for n in ("Get", "Replace", "Add", "Delete")))
atomics = st.builds(Command, name=st.sampled_from(["Atomic", "Sequence"]), cmd_id=number, commands=st.lists(st.one_of(*(simple_command(n) for n in ("Replace", "Delete"))), min_size=1, max_size=3))

messages = st.builds(
    Message,
    header=st.builds(
        SyncHdr,
        session_id=number,
        msg_id=number,
        target=uri,
        source=st.just("IMEI:490154203237518"),
        resp_uri=st.one_of(st.none(), st.just("http://127.0.0.1/dm?s=abc")),
        cred=st.one_of(st.none(), st.builds(Cred, type=st.just("syncml:auth-md5"), data=st.just("Zz6EivR3yeaaENcRN6lpAQ=="))),
        meta=st.one_of(st.none(), st.builds(Meta, max_msg_size=st.integers(1, 10**6), max_obj_size=st.integers(1, 10**7))),
    ),
    commands=st.lists(st.one_of(leaf_commands, atomics), max_size=6),
    final=st.booleans(),
)


def normalise(message: Message) -> Message:
    """Binary items are written with Format bin (b64 in XML); compare without it."""
    for command in message.walk():
        for item in command.items:
            if isinstance(item.data, bytes) and item.meta is not None:
                item.meta.format = None
                if item.meta.is_empty():
                    item.meta = None
    return message


@settings(max_examples=150, deadline=None)
@given(messages)
def test_messages_round_trip_xml(message):
    decoded = decode_message(encode_message(message, Encoding.XML), "application/vnd.syncml.dm+xml").message
    assert normalise(decoded) == normalise(message)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_messages_round_trip_wbxml(message):
    decoded = decode_message(encode_message(message, Encoding.WBXML), "application/vnd.syncml.dm+wbxml").message
    assert normalise(decoded) == normalise(message)
