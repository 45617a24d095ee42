"""A throwaway Kannel with a fake SMSC, for tests and the push demo.

``KannelLab`` writes a kannel.conf into a work directory and starts
bearerbox, smsbox, optionally wapbox (the PPG) and Kannel's ``fakesmsc``,
which plays the SMSC and logs every SMS it receives. ``messages()`` parses
that log into UDH and user data octets.

Kannel's boxes and the fake SMSC listen on all interfaces, so the lab runs
only inside a private network namespace and refuses to start elsewhere.
Run the program that uses it under ``unshare -n``; the command line
does that job in one step and brings the loopback interface up::

    unshare -n python -m dmserver.push.kannel_lab --workdir /tmp/lab -- \\
        python tools/some_demo.py

The command runs with DMSERVER_KANNEL_SENDSMS_URL,
DMSERVER_KANNEL_PPG_URL, DMSERVER_KANNEL_USERNAME,
DMSERVER_KANNEL_PASSWORD and DMSERVER_FAKESMSC_LOG set, and every Kannel
process is killed (process group) when it exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

from dmserver.push.sms import SmsSegment

logger = logging.getLogger(__name__)

KANNEL_BINARY_DIRECTORIES = ("/usr/sbin", "/usr/bin", "/usr/local/sbin")
FAKESMSC_CANDIDATES = (
    "/usr/lib/kannel/test/fakesmsc",
    "/usr/local/lib/kannel/test/fakesmsc",
)
START_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 2.0
POLL_INTERVAL_SECONDS = 0.1
LOOPBACK = "127.0.0.1"

SENDSMS_USERNAME = "dmserver"
SENDSMS_PASSWORD = "dmserver-lab"
ADMIN_PASSWORD = "dmserver-lab-admin"
SMSC_ID = "FAKE"
GLOBAL_SENDER = "1234"

# fakesmsc logs "Got message N: <sender receiver [udh UDH] data|text MSG>",
# URL-encoded with "+" for space.
_FAKESMSC_LINE = re.compile(r"Got message \d+: <(?P<body>.*)>\s*$")


class KannelLabError(RuntimeError):
    """Kannel could not be started or is not installed."""


@dataclass(frozen=True)
class KannelLabPorts:
    admin: int = 13000
    smsbox: int = 13001
    wapbox: int = 13002
    sendsms: int = 13013
    fake_smsc: int = 10000
    ppg: int = 8080


@dataclass(frozen=True)
class FakeSmscMessage:
    """One SMS as the fake SMSC received it."""

    sender: str
    receiver: str
    udh: bytes
    data: bytes

    @property
    def segment(self) -> SmsSegment:
        return SmsSegment(udh=self.udh, data=self.data)


def _url_decode(text: str) -> bytes:
    return unquote_to_bytes(text.replace("+", " "))


def parse_fakesmsc_line(line: str) -> FakeSmscMessage | None:
    """Decode one fakesmsc log line, or return None for other lines."""
    match = _FAKESMSC_LINE.search(line)
    if match is None:
        return None
    fields = match.group("body").split(" ")
    if len(fields) < 4:
        return None
    sender, receiver, kind = fields[0], fields[1], fields[2]
    udh = b""
    rest = fields[3:]
    if kind == "udh":
        if len(rest) < 3:
            return None
        udh = _url_decode(rest[0])
        kind, rest = rest[1], rest[2:]
    message = " ".join(rest)
    data = message.encode("latin-1") if kind == "text" else _url_decode(message)
    return FakeSmscMessage(sender=sender, receiver=receiver, udh=udh, data=data)


def read_fakesmsc_messages(log_path: str | os.PathLike[str]) -> list[FakeSmscMessage]:
    """Return the SMS a fakesmsc log file records, in arrival order."""
    path = Path(log_path)
    if not path.exists():
        return []
    messages = []
    for line in path.read_text(encoding="latin-1").splitlines():
        message = parse_fakesmsc_line(line)
        if message is not None:
            messages.append(message)
    return messages


def only_loopback_interfaces() -> bool:
    """Tell whether the current network namespace has no interface but lo.

    Then a socket bound to all interfaces is reachable only from this
    namespace, as in a fresh ``unshare -n``.
    """
    names = {name for _, name in socket.if_nameindex()}
    return names <= {"lo"}


def bring_up_loopback() -> None:
    """Set ``lo`` up in the current network namespace."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def find_kannel_tools() -> dict[str, str]:
    """Return paths of bearerbox, smsbox, wapbox and fakesmsc.

    Raises:
        KannelLabError: one of them is missing (install kannel and
            kannel-extras).
    """
    search_path = os.pathsep.join(
        [os.environ.get("PATH", ""), *KANNEL_BINARY_DIRECTORIES]
    )
    tools: dict[str, str] = {}
    for name in ("bearerbox", "smsbox", "wapbox"):
        found = shutil.which(name, path=search_path)
        if found is None:
            raise KannelLabError(f"{name} not found; install the kannel package")
        tools[name] = found
    for candidate in FAKESMSC_CANDIDATES:
        if os.access(candidate, os.X_OK):
            tools["fakesmsc"] = candidate
            break
    else:
        raise KannelLabError("fakesmsc not found; install the kannel-extras package")
    return tools


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class KannelLab:
    """Kannel bearerbox, smsbox, wapbox and fakesmsc in a work directory.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        ports: KannelLabPorts = KannelLabPorts(),
        with_wapbox: bool = True,
        allow_host_network: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.ports = ports
        self.with_wapbox = with_wapbox
        self._allow_host_network = allow_host_network
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def sendsms_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.sendsms}/cgi-bin/sendsms"

    @property
    def ppg_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.ppg}/wappush"

    @property
    def config_path(self) -> Path:
        return self.workdir / "kannel.conf"

    @property
    def fakesmsc_log(self) -> Path:
        return self.workdir / "fakesmsc.out"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def environment(self) -> dict[str, str]:
        """Variables that tell a program where this lab listens."""
        return {
            "DMSERVER_KANNEL_SENDSMS_URL": self.sendsms_url,
            "DMSERVER_KANNEL_PPG_URL": self.ppg_url,
            "DMSERVER_KANNEL_USERNAME": SENDSMS_USERNAME,
            "DMSERVER_KANNEL_PASSWORD": SENDSMS_PASSWORD,
            "DMSERVER_FAKESMSC_LOG": str(self.fakesmsc_log),
        }

    def write_config(self) -> None:
        ports = self.ports
        log = self.workdir
        # bearerbox refuses a wapbox-port without a wapbox group.
        wapbox_settings = (
            f'wapbox-port = {ports.wapbox}\nwdp-interface-name = "{LOOPBACK}"\n'
            if self.with_wapbox
            else ""
        )
        groups = [
            f"""group = core
admin-port = {ports.admin}
admin-password = {ADMIN_PASSWORD}
smsbox-port = {ports.smsbox}
{wapbox_settings}box-allow-ip = "{LOOPBACK}"
log-file = "{log}/bearerbox.log"
log-level = 0
access-log = "{self.access_log}"
""",
            f"""group = smsc
smsc = fake
smsc-id = {SMSC_ID}
port = {ports.fake_smsc}
connect-allow-ip = "{LOOPBACK}"
""",
            f"""group = smsbox
bearerbox-host = {LOOPBACK}
sendsms-port = {ports.sendsms}
global-sender = {GLOBAL_SENDER}
log-file = "{log}/smsbox.log"
log-level = 0
""",
            f"""group = sendsms-user
username = {SENDSMS_USERNAME}
password = {SENDSMS_PASSWORD}
max-messages = 1
concatenation = false
""",
        ]
        if self.with_wapbox:
            groups += [
                f"""group = wapbox
bearerbox-host = {LOOPBACK}
log-file = "{log}/wapbox.log"
log-level = 0
""",
                f"""group = ppg
ppg-url = /wappush
ppg-port = {ports.ppg}
concurrent-pushes = 10
trusted-pi = false
users = 10
ppg-allow-ip = "{LOOPBACK}"
default-smsc = {SMSC_ID}
""",
                f"""group = wap-push-user
wap-push-user = dmserver
ppg-username = {SENDSMS_USERNAME}
ppg-password = {SENDSMS_PASSWORD}
allow-ip = "{LOOPBACK}"
""",
            ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(groups), encoding="ascii")

    def _spawn(self, name: str, argv: list[str]) -> None:
        output = open(self.workdir / f"{name}.out", "wb")
        try:
            # Each box gets its own process group, so stop() can kill the
            # box and anything it forked in one signal.
            self._processes[name] = subprocess.Popen(
                argv,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            output.close()
        logger.debug("started %s (pid %d)", name, self._processes[name].pid)

    def _wait(self, description: str, ready, deadline: float) -> None:
        while not ready():
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise KannelLabError(
                        f"{name} exited with status {process.returncode} while "
                        f"waiting for {description}; see {self.workdir}/{name}.out"
                    )
            if time.monotonic() > deadline:
                raise KannelLabError(
                    f"timed out waiting for {description}; "
                    f"see the logs in {self.workdir}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)

    def status_text(self) -> str:
        """Return bearerbox's status.txt page, or "" when it is unreachable."""
        url = (
            f"http://{LOOPBACK}:{self.ports.admin}/status.txt?password={ADMIN_PASSWORD}"
        )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return response.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _all_connected(self) -> bool:
        status = self.status_text()
        if f"{SMSC_ID}:{self.ports.fake_smsc} (online" not in status:
            return False
        if "smsbox" not in status or not _port_open(self.ports.sendsms):
            return False
        if self.with_wapbox:
            return "wapbox, IP" in status and _port_open(self.ports.ppg)
        return True

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start all processes and wait until the SMSC and boxes are online.

        Raises:
            KannelLabError: not in a private network namespace, a tool is
                missing, a process exited, or ``timeout`` passed.
        """
        if not (self._allow_host_network or only_loopback_interfaces()):
            raise KannelLabError(
                "Kannel listens on all interfaces; run the lab inside a private "
                "network namespace that has only lo (unshare -n)"
            )
        tools = find_kannel_tools()
        self.write_config()
        deadline = time.monotonic() + timeout
        config = str(self.config_path)
        try:
            self._spawn("bearerbox", [tools["bearerbox"], "-v", "1", config])
            self._wait(
                "bearerbox to listen",
                lambda: (
                    _port_open(self.ports.fake_smsc) and _port_open(self.ports.admin)
                ),
                deadline,
            )
            self._spawn(
                "fakesmsc",
                [
                    tools["fakesmsc"],
                    "-H",
                    LOOPBACK,
                    "-r",
                    str(self.ports.fake_smsc),
                    "-m",
                    "0",
                    "0 0 text unused",
                ],
            )
            self._spawn("smsbox", [tools["smsbox"], "-v", "1", config])
            if self.with_wapbox:
                self._spawn("wapbox", [tools["wapbox"], "-v", "1", config])
            self._wait(
                "the fake SMSC and boxes to connect", self._all_connected, deadline
            )
        except BaseException:
            self.stop()
            raise
        logger.info("Kannel lab running in %s", self.workdir)

    def stop(self) -> None:
        """Kill every started process group; safe to call more than once."""
        for name, process in reversed(list(self._processes.items())):
            _terminate_group(name, process)
        self._processes.clear()

    def messages(self) -> list[FakeSmscMessage]:
        """Return the SMS the fake SMSC has received so far."""
        return read_fakesmsc_messages(self.fakesmsc_log)

    def wait_for_messages(
        self, count: int, timeout: float = 10.0
    ) -> list[FakeSmscMessage]:
        """Wait until at least ``count`` SMS arrived; return all of them.

        Returns whatever arrived when ``timeout`` passes first, so the caller
        can report what is missing.
        """
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if len(messages) >= count or time.monotonic() > deadline:
                return messages
            time.sleep(POLL_INTERVAL_SECONDS)

    def __enter__(self) -> KannelLab:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _terminate_group(name: str, process: subprocess.Popen[bytes]) -> None:
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        process.wait()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
            break
        except subprocess.TimeoutExpired:
            logger.debug("%s did not stop on %s", name, sig.name)
    # The box is gone; kill anything it left in its group.
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def main(argv: list[str] | None = None) -> int:
    """Run a command next to a Kannel lab; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m dmserver.push.kannel_lab",
        description="Start Kannel with a fake SMSC in this network namespace, "
        "run a command, then stop Kannel.",
    )
    parser.add_argument(
        "--workdir", required=True, help="directory for config and logs"
    )
    parser.add_argument("--no-wapbox", action="store_true", help="do not start the PPG")
    parser.add_argument(
        "--no-loopback-setup",
        action="store_true",
        help="do not run 'ip link set lo up' first",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args]")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("a command to run is required after --")

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not options.no_loopback_setup:
        bring_up_loopback()
    lab = KannelLab(options.workdir, with_wapbox=not options.no_wapbox)
    try:
        lab.start()
    except KannelLabError as exc:
        print(f"kannel_lab: {exc}", file=sys.stderr)
        return 2
    try:
        environment = {**os.environ, **lab.environment()}
        return subprocess.run(command, env=environment).returncode
    finally:
        lab.stop()


if __name__ == "__main__":
    sys.exit(main())
