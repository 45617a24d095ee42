"""The simulated phone: its DM tree, DM account, firmware image and state.

This module owns what a feature phone keeps in flash between sessions:

- the management tree (./DevInfo, ./DevDetail, ./DMAcc/<account>, the FUMO
  node) with the access types of each node, and the tree operations a DM
  server can request, each returning the SyncML status code to send;
- the nonces: the client nonce the server issued to the phone and the
  server nonce the phone issued to the server;
- the firmware image file and the certificate of the firmware signing key;
- the FUMO operation accepted by an Exec and not yet carried out, and the
  Generic Alert results not yet delivered to the server.

Everything lives in one state directory: ``phone.json`` for the tree and the
pending work, and the image, certificate and package files beside it. Each
save replaces ``phone.json`` atomically, so a simulator killed at any point
resumes from the last saved state, like a phone surviving a reboot.

It does not speak SyncML or HTTP: ``session`` and ``download`` do.

Example::

    phone = Phone.create(Path("state"), device_id="IMEI:490154203237518",
                         model="ACME-100", manufacturer="ACME",
                         firmware_version="1.0", firmware=Path("fw-1.0.bin"),
                         cert=Path("signing-cert.pem"),
                         client_password="secret", server_password="s3")
    phone.tree.get("./DevDetail/FwV").value      # "1.0"
    phone = Phone.load(Path("state"))            # after a "reboot"
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..mo import fumo
from ..syncml import auth
from ..syncml.codes import StatusCode

logger = logging.getLogger(__name__)

STATE_FILE = "phone.json"
IMAGE_FILE = "firmware.bin"
CERT_FILE = "server-cert.pem"
PARTIAL_FILE = "download.part"
PACKAGE_FILE = "package.bin"
STATE_FORMAT_VERSION = 1

DEFAULT_SERVER_ID = "dmserver"
DEFAULT_FUMO_NODE = "./FUMO/x"
DEFAULT_LANGUAGE = "en-US"
DEFAULT_BATTERY = 100  # percent
# Free flash for downloads and the new image, in bytes. 64 MiB is several
# times the largest image of the fixtures and the firmware corpus (4.7 MB).
DEFAULT_FREE_STORAGE = 64 * 1024 * 1024

# Node formats (DM Tree and Description: chr, int, bool, b64, bin, node ...).
FORMAT_NODE = "node"
FORMAT_CHR = "chr"
FORMAT_INT = "int"
FORMAT_BOOL = "bool"
FORMAT_B64 = "b64"
FORMAT_BIN = "bin"
BINARY_FORMATS = frozenset({FORMAT_B64, FORMAT_BIN})
LEAF_FORMATS = frozenset({FORMAT_CHR, FORMAT_INT, FORMAT_BOOL, FORMAT_B64, FORMAT_BIN})

# Access types of the DDF AccessType element.
GET = "Get"
REPLACE = "Replace"
ADD = "Add"
DELETE = "Delete"
EXEC = "Exec"

# Management object identifiers returned as Meta Type of interior nodes.
MO_DEVINFO = "urn:oma:mo:oma-dm-devinfo:1.0"
MO_DEVDETAIL = "urn:oma:mo:oma-dm-devdetail:1.0"
MO_DMACC = "urn:oma:mo:oma-dm-dmacc:1.0"

# AAuthPref values of the DMAcc object for each client authentication scheme.
AUTH_PREF_BY_SCHEME = {"basic": "BASIC", "md5": "DIGEST", "hmac": "HMAC"}
SCHEME_BY_AUTH_PREF = {pref: scheme for scheme, pref in AUTH_PREF_BY_SCHEME.items()}

FUMO_OPERATIONS = (
    fumo.NODE_DOWNLOAD,
    fumo.NODE_UPDATE,
    fumo.NODE_DOWNLOAD_AND_UPDATE,
)
ALERT_TYPE_BY_OPERATION = {
    fumo.NODE_DOWNLOAD: fumo.ALERT_TYPE_DOWNLOAD,
    fumo.NODE_UPDATE: fumo.ALERT_TYPE_UPDATE,
    fumo.NODE_DOWNLOAD_AND_UPDATE: fumo.ALERT_TYPE_DOWNLOAD_AND_UPDATE,
}


class PhoneStateError(Exception):
    """The state directory is missing, already in use, or unreadable."""


# ---------------------------------------------------------------------------
# The management tree


@dataclass
class Node:
    """One node of the management tree.

    ``value`` is text for chr, int and bool leaves, base64 text for b64 and
    bin leaves, and None for interior nodes. ``type`` is the MIME type of a
    leaf or the management object identifier of an interior node.
    """

    format: str
    value: str | None = None
    access: frozenset[str] = frozenset({GET})
    type: str | None = None

    @property
    def is_interior(self) -> bool:
        return self.format == FORMAT_NODE

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "value": self.value,
            "access": sorted(self.access),
            "type": self.type,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        return cls(
            format=data["format"],
            value=data.get("value"),
            access=frozenset(data.get("access", [GET])),
            type=data.get("type"),
        )


def normalize_uri(uri: str) -> str:
    """Return ``uri`` in the form the tree stores: "./A/B", or "." for the root.

    DM servers send both absolute ("./DevInfo") and relative ("DevInfo")
    URIs; a trailing "/" is tolerated.
    """
    uri = uri.strip()
    if uri in ("", ".", "./"):
        return "."
    if uri.startswith("./"):
        uri = uri[2:]
    elif uri.startswith("/"):
        uri = uri[1:]
    return "./" + uri.rstrip("/")


def parent_uri(uri: str) -> str:
    head, _, _ = uri.rpartition("/")
    return head or "."


class DMTree:
    """The management tree as a map from normalized URI to :class:`Node`.

    Children keep the order in which they were added, which is the order a
    Get on an interior node lists them in.
    """

    def __init__(self, nodes: dict[str, Node] | None = None):
        self.nodes: dict[str, Node] = nodes or {".": Node(FORMAT_NODE)}

    def get(self, uri: str) -> Node | None:
        return self.nodes.get(normalize_uri(uri))

    def value(self, uri: str) -> str | None:
        node = self.get(uri)
        return None if node is None else node.value

    def children(self, uri: str) -> list[str]:
        """Return the names of the children of the interior node ``uri``."""
        uri = normalize_uri(uri)
        prefix = "./" if uri == "." else uri + "/"
        return [
            path[len(prefix) :]
            for path in self.nodes
            if path.startswith(prefix) and "/" not in path[len(prefix) :]
        ]

    def set_node(self, uri: str, node: Node) -> None:
        """Insert or overwrite ``uri``, creating missing interior parents."""
        uri = normalize_uri(uri)
        missing = []
        parent = parent_uri(uri)
        while parent not in self.nodes:
            missing.append(parent)
            parent = parent_uri(parent)
        for path in reversed(missing):
            self.nodes[path] = Node(FORMAT_NODE, access=frozenset({GET, ADD, DELETE}))
        self.nodes[uri] = node

    def set_value(self, uri: str, value: str | None) -> None:
        node = self.nodes[normalize_uri(uri)]
        node.value = value

    def remove(self, uri: str) -> None:
        """Remove ``uri`` and everything below it."""
        uri = normalize_uri(uri)
        prefix = uri + "/"
        for path in [p for p in self.nodes if p == uri or p.startswith(prefix)]:
            del self.nodes[path]

    def snapshot(self) -> dict[str, Node]:
        return copy.deepcopy(self.nodes)

    def restore(self, snapshot: dict[str, Node]) -> None:
        self.nodes = snapshot

    def to_json(self) -> dict[str, Any]:
        return {path: node.to_json() for path, node in self.nodes.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DMTree:
        return cls({path: Node.from_json(node) for path, node in data.items()})


def leaf(
    value: str,
    access: set[str] | frozenset[str] = frozenset({GET}),
    format: str = FORMAT_CHR,
    type: str = "text/plain",
) -> Node:
    return Node(format=format, value=value, access=frozenset(access), type=type)


def interior(
    access: set[str] | frozenset[str] = frozenset({GET}), type: str | None = None
) -> Node:
    return Node(format=FORMAT_NODE, access=frozenset(access), type=type)


def fumo_nodes(root: str) -> dict[str, Node]:
    """Return the nodes of one FUMO instance at ``root`` (FUMO 1.0 layout)."""
    return {
        root: interior({GET, DELETE}, fumo.FUMO_MO_TYPE),
        f"{root}/{fumo.NODE_PKG_NAME}": leaf("", {GET, REPLACE}),
        f"{root}/{fumo.NODE_PKG_VERSION}": leaf("", {GET, REPLACE}),
        f"{root}/{fumo.NODE_DOWNLOAD}": interior({GET, EXEC}),
        f"{root}/{fumo.NODE_DOWNLOAD_PKG_URL}": leaf("", {GET, REPLACE}),
        f"{root}/{fumo.NODE_UPDATE}": interior({GET, EXEC}),
        # PkgData is write-only: a Get would return the whole package.
        f"{root}/{fumo.NODE_UPDATE_PKG_DATA}": Node(
            FORMAT_BIN, None, frozenset({REPLACE}), "application/octet-stream"
        ),
        f"{root}/{fumo.NODE_DOWNLOAD_AND_UPDATE}": interior({GET, EXEC}),
        f"{root}/{fumo.NODE_DOWNLOAD_AND_UPDATE_PKG_URL}": leaf("", {GET, REPLACE}),
        f"{root}/{fumo.NODE_STATE}": leaf(
            str(int(fumo.FumoState.IDLE)), {GET}, FORMAT_INT
        ),
        f"{root}/{fumo.NODE_EXT}": interior({GET, ADD, REPLACE, DELETE}),
    }


# ---------------------------------------------------------------------------
# Pending work


@dataclass
class FumoJob:
    """A FUMO operation the phone accepted with 202 and has not finished.

    ``operation`` is the Exec target below the FUMO node: Download, Update
    or DownloadAndUpdate. ``pkg_url`` is the PkgURL value at Exec time.
    """

    fumo_node: str
    operation: str
    correlator: str | None
    pkg_url: str | None

    @property
    def source_uri(self) -> str:
        return f"{self.fumo_node}/{self.operation}"

    @property
    def alert_type(self) -> str:
        return ALERT_TYPE_BY_OPERATION[self.operation]


@dataclass
class FumoReport:
    """A FUMO result waiting to be delivered in a Generic Alert (1226)."""

    source_uri: str
    alert_type: str
    correlator: str | None
    result_code: int


@dataclass
class DownloadRecord:
    """The partial download on disk: which URL, which ETag, expected size."""

    url: str
    etag: str | None = None
    size: int | None = None


# ---------------------------------------------------------------------------
# The phone


@dataclass
class Phone:
    """A feature phone's persistent state in ``state_dir``."""

    state_dir: Path
    tree: DMTree
    account: str
    fumo_node: str
    pending_job: FumoJob | None = None
    pending_reports: list[FumoReport] = field(default_factory=list)
    download: DownloadRecord | None = None

    # -- creation and persistence -------------------------------------------

    @classmethod
    def create(
        cls,
        state_dir: Path,
        *,
        device_id: str,
        model: str,
        manufacturer: str,
        firmware_version: str,
        firmware: Path | bytes,
        cert: Path | bytes,
        client_password: str,
        server_password: str,
        client_username: str | None = None,
        server_id: str = DEFAULT_SERVER_ID,
        server_url: str = "",
        auth_scheme: str = "md5",
        dm_version: str = "1.2",
        battery: int = DEFAULT_BATTERY,
        free_storage: int = DEFAULT_FREE_STORAGE,
        fumo_node: str = DEFAULT_FUMO_NODE,
        language: str = DEFAULT_LANGUAGE,
        hardware_version: str = "1.0",
    ) -> Phone:
        """Create a new phone in ``state_dir`` and save it.

        ``firmware`` and ``cert`` are files to copy in, or their contents.
        The nonces start at the factory value "null".

        Raises:
            PhoneStateError: ``state_dir`` already contains a phone.
            ValueError: an invalid authentication scheme, DM version or
                FUMO node.
        """
        state_dir = Path(state_dir)
        if (state_dir / STATE_FILE).exists():
            raise PhoneStateError(
                f"{state_dir} already contains a phone; load it with Phone.load or "
                "remove the directory to start over"
            )
        if auth_scheme not in AUTH_PREF_BY_SCHEME:
            raise ValueError(
                f"authentication scheme must be one of "
                f"{sorted(AUTH_PREF_BY_SCHEME)}, got {auth_scheme!r}"
            )
        if dm_version not in ("1.2", "1.1.2"):
            raise ValueError(f"DM version must be 1.2 or 1.1.2, got {dm_version!r}")
        fumo_node = normalize_uri(fumo_node)
        if fumo_node == "." or "?" in fumo_node:
            raise ValueError(f"invalid FUMO node {fumo_node!r}")

        state_dir.mkdir(parents=True, exist_ok=True)
        image = firmware if isinstance(firmware, bytes) else Path(firmware).read_bytes()
        cert_bytes = cert if isinstance(cert, bytes) else Path(cert).read_bytes()
        _write_atomically(state_dir / IMAGE_FILE, image)
        _write_atomically(state_dir / CERT_FILE, cert_bytes)

        account = _node_name(server_id)
        tree = DMTree()
        nodes = _factory_nodes(
            device_id=device_id,
            model=model,
            manufacturer=manufacturer,
            firmware_version=firmware_version,
            hardware_version=hardware_version,
            language=language,
            dm_version=dm_version,
            account=account,
            server_id=server_id,
            server_url=server_url,
            client_username=client_username or device_id,
            client_password=client_password,
            server_password=server_password,
            auth_scheme=auth_scheme,
            battery=battery,
            free_storage=free_storage,
        )
        if parent_uri(fumo_node) != ".":
            nodes[parent_uri(fumo_node)] = interior({GET, ADD})
        nodes.update(fumo_nodes(fumo_node))
        for path, node in nodes.items():
            tree.set_node(path, node)

        phone = cls(
            state_dir=state_dir, tree=tree, account=account, fumo_node=fumo_node
        )
        phone.save()
        logger.info(
            "created phone %s (%s %s, firmware %s, %d bytes) in %s",
            device_id,
            manufacturer,
            model,
            firmware_version,
            len(image),
            state_dir,
        )
        return phone

    @classmethod
    def exists(cls, state_dir: Path) -> bool:
        return (Path(state_dir) / STATE_FILE).is_file()

    @classmethod
    def load(cls, state_dir: Path) -> Phone:
        """Load the phone saved in ``state_dir``.

        Raises:
            PhoneStateError: no phone there, or its state file is unreadable.
        """
        state_dir = Path(state_dir)
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise PhoneStateError(
                f"{state_dir} contains no phone ({STATE_FILE} not found); create "
                "one with 'dmsim run' and the phone options"
            ) from None
        except (OSError, ValueError) as error:
            raise PhoneStateError(f"cannot read {path}: {error}") from None
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise PhoneStateError(
                f"{path} has state format {data.get('format_version')!r}; this "
                f"simulator reads format {STATE_FORMAT_VERSION}"
            )
        job = data.get("pending_job")
        download = data.get("download")
        try:
            return cls(
                state_dir=state_dir,
                tree=DMTree.from_json(data["tree"]),
                account=data["account"],
                fumo_node=data["fumo_node"],
                pending_job=FumoJob(**job) if job else None,
                pending_reports=[
                    FumoReport(**report) for report in data.get("pending_reports", [])
                ],
                download=DownloadRecord(**download) if download else None,
            )
        except (KeyError, TypeError) as error:
            raise PhoneStateError(f"{path} is damaged: {error!r}") from None

    def save(self) -> None:
        """Write the state file atomically (temporary file, fsync, rename)."""
        data = {
            "format_version": STATE_FORMAT_VERSION,
            "account": self.account,
            "fumo_node": self.fumo_node,
            "tree": self.tree.to_json(),
            "pending_job": asdict(self.pending_job) if self.pending_job else None,
            "pending_reports": [asdict(report) for report in self.pending_reports],
            "download": asdict(self.download) if self.download else None,
        }
        text = json.dumps(data, indent=1, sort_keys=True)
        _write_atomically(self.state_dir / STATE_FILE, text.encode("utf-8"))

    # -- files ---------------------------------------------------------------

    @property
    def image_path(self) -> Path:
        return self.state_dir / IMAGE_FILE

    @property
    def cert_path(self) -> Path:
        return self.state_dir / CERT_FILE

    @property
    def partial_path(self) -> Path:
        return self.state_dir / PARTIAL_FILE

    @property
    def package_path(self) -> Path:
        return self.state_dir / PACKAGE_FILE

    def read_image(self) -> bytes:
        return self.image_path.read_bytes()

    def image_sha256(self) -> str:
        digest = hashlib.sha256()
        with self.image_path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 16), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def replace_image(self, image: bytes) -> None:
        """Swap in a new firmware image atomically."""
        _write_atomically(self.image_path, image)

    # -- values the rest of the simulator reads ------------------------------

    def _account_value(self, name: str) -> str:
        return self.tree.value(f"./DMAcc/{self.account}/{name}") or ""

    @property
    def device_id(self) -> str:
        return self.tree.value("./DevInfo/DevId") or ""

    @property
    def model(self) -> str:
        return self.tree.value("./DevInfo/Mod") or ""

    @property
    def dm_version(self) -> str:
        return self.tree.value("./DevInfo/DmV") or "1.2"

    @property
    def firmware_version(self) -> str:
        return self.tree.value("./DevDetail/FwV") or ""

    @firmware_version.setter
    def firmware_version(self, version: str) -> None:
        self.tree.set_value("./DevDetail/FwV", version)

    @property
    def client_username(self) -> str:
        return self._account_value("AAuthName")

    @property
    def client_password(self) -> str:
        return self._account_value("AAuthSecret")

    @property
    def server_id(self) -> str:
        return self._account_value("ServerID")

    @property
    def server_password(self) -> str:
        return self._account_value("SAuthSecret")

    @property
    def auth_scheme(self) -> str:
        """The preferred client authentication: "md5", "basic" or "hmac"."""
        return SCHEME_BY_AUTH_PREF.get(self._account_value("AAuthPref"), "md5")

    @property
    def client_nonce(self) -> bytes:
        """The nonce the server issued for the phone's next credential."""
        return base64.b64decode(self._account_value("ClientNonce"))

    @client_nonce.setter
    def client_nonce(self, nonce: bytes) -> None:
        self.tree.set_value(
            f"./DMAcc/{self.account}/ClientNonce", base64.b64encode(nonce).decode()
        )

    @property
    def server_nonce(self) -> bytes:
        """The nonce the phone issued for the server's next credential."""
        return base64.b64decode(self._account_value("ServerNonce"))

    @server_nonce.setter
    def server_nonce(self, nonce: bytes) -> None:
        self.tree.set_value(
            f"./DMAcc/{self.account}/ServerNonce", base64.b64encode(nonce).decode()
        )

    @property
    def battery(self) -> int:
        """Battery charge in percent."""
        return int(self.tree.value("./DevDetail/Ext/Battery") or 0)

    @battery.setter
    def battery(self, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"battery must be 0 to 100 percent, got {percent}")
        self.tree.set_value("./DevDetail/Ext/Battery", str(percent))

    @property
    def free_storage(self) -> int:
        """Free flash storage in bytes."""
        return int(self.tree.value("./DevDetail/Ext/FreeMem") or 0)

    @free_storage.setter
    def free_storage(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"free storage must be 0 or more bytes, got {size}")
        self.tree.set_value("./DevDetail/Ext/FreeMem", str(size))

    def fumo_state(self) -> int:
        return int(self.tree.value(f"{self.fumo_node}/{fumo.NODE_STATE}") or 0)

    def set_fumo_state(self, state: fumo.FumoState, node: str | None = None) -> None:
        node = node or self.fumo_node
        path = f"{node}/{fumo.NODE_STATE}"
        if self.tree.get(path) is None:
            return
        self.tree.set_value(path, str(int(state)))
        logger.info("FUMO State of %s is now %d (%s)", node, state, state.name)

    # -- tree operations requested by a server ---------------------------------

    def get(self, uri: str) -> tuple[int, Node | None, list[str]]:
        """Run a Get: return (status, node, child names of an interior node)."""
        if "?" in uri:
            # ?list=Struct, ?prop=ACL and the other DM 1.2 queries.
            return StatusCode.OPTIONAL_FEATURE_NOT_SUPPORTED, None, []
        node = self.tree.get(uri)
        if node is None:
            return StatusCode.NOT_FOUND, None, []
        if GET not in node.access:
            return StatusCode.COMMAND_NOT_ALLOWED, None, []
        children = self.tree.children(uri) if node.is_interior else []
        return StatusCode.OK, node, [quote(name, safe="") for name in children]

    def replace(self, uri: str, data: str | bytes | None, format: str | None) -> int:
        """Run a Replace of a leaf value and return the status code."""
        node = self.tree.get(uri)
        if node is None:
            return StatusCode.NOT_FOUND
        if node.is_interior or REPLACE not in node.access:
            return StatusCode.COMMAND_NOT_ALLOWED
        if self._is_pkg_data(uri):
            return self._store_pkg_data(data)
        status, value = _leaf_value(data, format or node.format)
        if status != StatusCode.OK:
            return status
        node.value = value
        if format in LEAF_FORMATS:
            node.format = format
        return StatusCode.OK

    def add(
        self, uri: str, data: str | bytes | None, format: str | None, type: str | None
    ) -> int:
        """Run an Add of a leaf or interior node and return the status code."""
        uri = normalize_uri(uri)
        if uri == "." or "?" in uri:
            return StatusCode.COMMAND_NOT_ALLOWED
        if self.tree.get(uri) is not None:
            return StatusCode.ALREADY_EXISTS
        ancestor = parent_uri(uri)
        while self.tree.get(ancestor) is None:
            ancestor = parent_uri(ancestor)
        parent = self.tree.get(ancestor)
        if not parent.is_interior or ADD not in parent.access:
            return StatusCode.COMMAND_NOT_ALLOWED
        access = frozenset({GET, REPLACE, ADD, DELETE})
        if format == FORMAT_NODE:
            if parent_uri(uri) == parent_uri(self.fumo_node):
                # A new FUMO instance beside the factory one.
                for path, node in fumo_nodes(uri).items():
                    self.tree.set_node(path, node)
                return StatusCode.OK
            self.tree.set_node(uri, Node(FORMAT_NODE, access=access, type=type))
            return StatusCode.OK
        status, value = _leaf_value(data, format or FORMAT_CHR)
        if status != StatusCode.OK:
            return status
        self.tree.set_node(
            uri, Node(format or FORMAT_CHR, value, access, type or "text/plain")
        )
        return StatusCode.OK

    def delete(self, uri: str) -> int:
        """Run a Delete of a node and its subtree and return the status code."""
        node = self.tree.get(uri)
        if node is None:
            return StatusCode.NOT_FOUND
        if DELETE not in node.access:
            return StatusCode.COMMAND_NOT_ALLOWED
        self.tree.remove(uri)
        return StatusCode.OK

    def execute(self, uri: str, correlator: str | None) -> int:
        """Run an Exec: accept (202) and queue a FUMO operation.

        Returns 404 for a missing node, 405 for a node without Exec access,
        for a second operation while one is queued, and for Update without a
        stored package.
        """
        uri = normalize_uri(uri)
        node = self.tree.get(uri)
        if node is None:
            return StatusCode.NOT_FOUND
        if EXEC not in node.access:
            return StatusCode.COMMAND_NOT_ALLOWED
        fumo_node, _, operation = uri.rpartition("/")
        if operation not in FUMO_OPERATIONS:
            return StatusCode.COMMAND_NOT_ALLOWED
        if self.pending_job is not None:
            logger.info(
                "rejected Exec %s: %s is still queued", uri, self.pending_job.source_uri
            )
            return StatusCode.COMMAND_NOT_ALLOWED
        pkg_url = None
        if operation == fumo.NODE_UPDATE:
            if not self.package_path.exists():
                logger.info("rejected Exec %s: no package stored to update with", uri)
                return StatusCode.COMMAND_NOT_ALLOWED
        else:
            pkg_url = self.tree.value(f"{uri}/PkgURL") or ""
        self.pending_job = FumoJob(
            fumo_node=fumo_node,
            operation=operation,
            correlator=correlator,
            pkg_url=pkg_url,
        )
        return StatusCode.ACCEPTED_FOR_PROCESSING

    def _is_pkg_data(self, uri: str) -> bool:
        suffix = "/" + fumo.NODE_UPDATE_PKG_DATA
        uri = normalize_uri(uri)
        if not uri.endswith(suffix):
            return False
        instance = self.tree.get(uri[: -len(suffix)])
        return instance is not None and instance.type == fumo.FUMO_MO_TYPE

    def _store_pkg_data(self, data: str | bytes | None) -> int:
        if data is None:
            return StatusCode.BAD_REQUEST
        payload = data if isinstance(data, bytes) else data.encode("utf-8")
        if len(payload) > self.free_storage:
            return StatusCode.DEVICE_FULL
        _write_atomically(self.package_path, payload)
        logger.info("stored %d bytes of Update/PkgData", len(payload))
        return StatusCode.OK

    # -- pending work ----------------------------------------------------------

    def finish_job(self, report: FumoReport) -> None:
        """Replace the pending job by its report, in one save."""
        self.pending_job = None
        self.pending_reports.append(report)
        self.save()


# ---------------------------------------------------------------------------
# Helpers


def _node_name(text: str) -> str:
    """Return ``text`` usable as one node name (no "/", not empty)."""
    name = text.replace("/", "_").strip()
    return name or DEFAULT_SERVER_ID


def _leaf_value(data: str | bytes | None, format: str) -> tuple[int, str | None]:
    """Convert received Item data to the stored text of a leaf."""
    if format in BINARY_FORMATS:
        raw = data if isinstance(data, bytes) else (data or "").encode("utf-8")
        return StatusCode.OK, base64.b64encode(raw).decode("ascii")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return StatusCode.BAD_REQUEST, None
    text = data or ""
    if format == FORMAT_INT:
        try:
            int(text)
        except ValueError:
            return StatusCode.BAD_REQUEST, None
    if format == FORMAT_BOOL and text.lower() not in ("true", "false"):
        return StatusCode.BAD_REQUEST, None
    return StatusCode.OK, text


def _factory_nodes(
    *,
    device_id: str,
    model: str,
    manufacturer: str,
    firmware_version: str,
    hardware_version: str,
    language: str,
    dm_version: str,
    account: str,
    server_id: str,
    server_url: str,
    client_username: str,
    client_password: str,
    server_password: str,
    auth_scheme: str,
    battery: int,
    free_storage: int,
) -> dict[str, Node]:
    factory_nonce = base64.b64encode(auth.FACTORY_NONCES[0]).decode("ascii")
    acc = f"./DMAcc/{account}"
    # Secrets and nonces have no Get access, as in the DMAcc DDF.
    secret = frozenset({REPLACE})
    settable = frozenset({GET, REPLACE})
    return {
        "./DevInfo": interior(type=MO_DEVINFO),
        "./DevInfo/DevId": leaf(device_id),
        "./DevInfo/Man": leaf(manufacturer),
        "./DevInfo/Mod": leaf(model),
        "./DevInfo/DmV": leaf(dm_version),
        "./DevInfo/Lang": leaf(language),
        "./DevDetail": interior(type=MO_DEVDETAIL),
        "./DevDetail/DevTyp": leaf("phone"),
        "./DevDetail/OEM": leaf(manufacturer),
        "./DevDetail/FwV": leaf(firmware_version),
        "./DevDetail/SwV": leaf(firmware_version),
        "./DevDetail/HwV": leaf(hardware_version),
        "./DevDetail/LrgObj": leaf("true", format=FORMAT_BOOL),
        "./DevDetail/Ext": interior(),
        "./DevDetail/Ext/Battery": leaf(str(battery), format=FORMAT_INT),
        "./DevDetail/Ext/FreeMem": leaf(str(free_storage), format=FORMAT_INT),
        "./DMAcc": interior({GET, ADD}),
        acc: interior({GET, ADD}, MO_DMACC),
        f"{acc}/AppID": leaf("w7"),
        f"{acc}/ServerID": leaf(server_id, settable),
        f"{acc}/Name": leaf(server_id, settable),
        f"{acc}/Addr": leaf(server_url, settable),
        f"{acc}/AAuthPref": leaf(AUTH_PREF_BY_SCHEME[auth_scheme], settable),
        f"{acc}/AAuthName": leaf(client_username, settable),
        f"{acc}/AAuthSecret": leaf(client_password, secret),
        f"{acc}/SAuthName": leaf(server_id, settable),
        f"{acc}/SAuthSecret": leaf(server_password, secret),
        f"{acc}/ClientNonce": leaf(factory_nonce, secret, FORMAT_B64),
        f"{acc}/ServerNonce": leaf(factory_nonce, secret, FORMAT_B64),
    }


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
