"""The chaos soak's network: Linux network namespaces of its own, and the faults it puts on them.

One run makes a hub namespace holding a bridge, on which Redis (10.77.0.1) and PostgreSQL
(10.77.0.2) listen, and one namespace per host, joined to the bridge by a veth pair (host N is
10.77.0.(10+N)). The soak itself moves into the hub (so it reaches both servers on the hub's own
loopback, as beat and the CLI do) and starts each host's batch server with ``ip netns exec``.
Every address exists only inside these namespaces: nothing is added to the machine's own
network, and two runs on one machine never see each other (their namespaces' names carry the
run id; the same 10.77.0.0/24 in two runs is two separate networks).

Faults, each undone by ``heal``: the host's link down (a cut cable: packets vanish, nothing
answers); delay or loss with ``tc netem`` when the kernel has it, else a slow link (``tbf``) and
loss with nftables (``numgen random``); a blackhole route to Redis or to PostgreSQL only. Needs
root and iproute2; nftables is optional.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess

SUBNET = "10.77.0"
BROKER_IP = f"{SUBNET}.1"
DB_IP = f"{SUBNET}.2"
CLONE_NEWNET = 0x40000000
NFT_TABLE = "chaos"


class NetworkError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _run(
    argv: list[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def preflight() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or use --hosts 1)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


class Network:
    def __init__(self, run_id: str, hosts: int) -> None:
        self.hub = f"chaos-{run_id}-hub"
        self.hosts = [f"chaos-{run_id}-h{n}" for n in range(1, hosts + 1)]
        self.created: list[str] = []
        self.netem = False
        self.nft = False

    def host_ip(self, host: int) -> str:
        return f"{SUBNET}.{10 + host + 1}"  # host index 0 is h1, 10.77.0.11

    def exec_prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host]]

    # --- making and removing it ---------------------------------------------------------

    def create(self) -> None:
        ip("netns", "add", self.hub)
        self.created.append(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{BROKER_IP}/24", "dev", "br0")
        ip("-n", self.hub, "addr", "add", f"{DB_IP}/24", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for n, ns in enumerate(self.hosts):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            port = f"v{n + 1}"
            # Made inside the namespaces, so no interface ever appears in the machine's own.
            ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            ip("-n", self.hub, "link", "set", port, "master", "br0")
            ip("-n", self.hub, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{self.host_ip(n)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        self.netem = _run(
            ["tc", "-n", self.hub, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            check=False,
        ).returncode == 0  # fmt: skip
        if self.netem:
            _run(["tc", "-n", self.hub, "qdisc", "del", "dev", "lo", "root"], check=False)
        self.nft = shutil.which("nft") is not None

    def enter_hub(self) -> None:
        """Move this process (its calling thread: call it before starting threads) into the hub.

        Python 3.11 has no os.setns; libc's is the same system call.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.hub}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise NetworkError(f"setns into {self.hub}: {os.strerror(errno)}")
        finally:
            os.close(fd)

    def destroy(self) -> None:
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created = []

    def capabilities(self) -> str:
        delay = "tc netem" if self.netem else "tbf (no netem in this kernel)"
        loss = "tc netem" if self.netem else ("nftables" if self.nft else "none")
        return f"link cut, delay: {delay}, loss: {loss}, broker/database routes"

    # --- faults ---------------------------------------------------------------------------

    def cut(self, host: int) -> None:
        """The host's cable is pulled: its bridge port goes down, its packets go nowhere."""
        ip("-n", self.hub, "link", "set", f"v{host + 1}", "down")

    def reconnect(self, host: int) -> None:
        ip("-n", self.hub, "link", "set", f"v{host + 1}", "up")

    def slow(self, host: int) -> str:
        if self.netem:
            spec = ["netem", "delay", "150ms", "50ms"]
        else:
            spec = ["tbf", "rate", "200kbit", "burst", "4kb", "latency", "2s"]
        self._qdisc(host, spec)
        return " ".join(spec)

    def lossy(self, host: int) -> str:
        if self.netem:
            spec = ["netem", "loss", "10%"]
            self._qdisc(host, spec)
            return " ".join(spec)
        if not self.nft:
            raise NetworkError("no netem and no nftables: cannot drop packets")
        rules = f"""
            table inet {NFT_TABLE} {{
                chain out {{ type filter hook output priority 0; numgen random mod 100 < 10 drop; }}
                chain in {{ type filter hook input priority 0; numgen random mod 100 < 10 drop; }}
            }}
        """
        _run(["ip", "netns", "exec", self.hosts[host], "nft", "-f", "-"], stdin=rules)
        return "nftables: 10% of packets dropped each way"

    def block(self, host: int, address: str) -> None:
        """The host loses its route to one server (the other stays reachable)."""
        ip("-n", self.hosts[host], "route", "add", "blackhole", f"{address}/32")

    def unblock(self, host: int, address: str) -> None:
        ip("-n", self.hosts[host], "route", "del", "blackhole", f"{address}/32", check=False)

    def _qdisc(self, host: int, spec: list[str]) -> None:
        for ns, dev in ((self.hosts[host], "eth0"), (self.hub, f"v{host + 1}")):
            _run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *spec])

    def heal(self, host: int) -> None:
        """Undo every fault on the host (each step does nothing when its fault is not on)."""
        with contextlib.suppress(NetworkError):
            self.reconnect(host)
        for ns, dev in ((self.hosts[host], "eth0"), (self.hub, f"v{host + 1}")):
            _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        if self.nft:
            _run(
                ["ip", "netns", "exec", self.hosts[host], "nft", "delete", "table", "inet", NFT_TABLE],
                check=False,
            )  # fmt: skip
        for address in (BROKER_IP, DB_IP):
            self.unblock(host, address)

    def heal_all(self) -> None:
        for host in range(len(self.hosts)):
            self.heal(host)
