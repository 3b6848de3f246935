"""Where ranks meet over TCP: the address and interface a ``torch.distributed`` process group can use.

Used by :func:`scaleml.torch.init_process_group_from_mpi` and the gloo
baselines of ``scaleml-bench``: one host (loopback), several hosts, or the
emulated cluster (one host name, a network namespace per emulated host).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from mpi4py import MPI

__all__ = ["NoCommonNetwork", "choose_rendezvous", "ipv4_interfaces", "rendezvous"]


class NoCommonNetwork(RuntimeError):
    """No IPv4 network joins every rank."""


def ipv4_interfaces() -> dict[str, tuple[str, str]]:
    """This network namespace's IPv4 interfaces.

    Returns
    -------
    dict[str, tuple[str, str]]
        ``{interface: (address, netmask)}`` (the primary address of each; Linux
        ioctls, an empty dict where they are unavailable).
    """
    import fcntl  # Unix only: here, so that the module imports where it is missing

    found = {}
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return found
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                address = fcntl.ioctl(s.fileno(), 0x8915, request)[20:24]  # SIOCGIFADDR
                netmask = fcntl.ioctl(s.fileno(), 0x891B, request)[20:24]  # SIOCGIFNETMASK
            except OSError:  # no IPv4 address on this interface
                continue
            found[name] = (socket.inet_ntoa(address), socket.inet_ntoa(netmask))
    return found


def choose_rendezvous(interfaces: list[dict[str, tuple[str, str]]], hosts: list[str],
                      preferred: str | None = None) -> tuple[str, list[str]]:
    """Where rank 0 listens for torch.distributed's rendezvous, and the interface each rank's gloo uses.

    Parameters
    ----------
    interfaces : list of dict
        Each rank's :func:`ipv4_interfaces`, in rank order.
    hosts : list of str
        Each rank's ``MPI.Get_processor_name()``.
    preferred : str, optional
        An interface every rank has (``GLOO_SOCKET_IFNAME`` when set).

    Returns
    -------
    address : str
        Rank 0's address on a network every rank reaches.
    ifnames : list of str
        Per rank, its interface on that network (gloo's ``GLOO_SOCKET_IFNAME``).

    Raises
    ------
    NoCommonNetwork
        No IPv4 network joins every rank.
    """
    P, first = len(interfaces), interfaces[0]
    if preferred and all(preferred in ifs for ifs in interfaces):
        return first[preferred][0], [preferred] * P
    loopback = next((name for name, (addr, _) in first.items() if addr.startswith("127.")), None)
    # One host and one network namespace (the same name and the same interfaces): loopback.
    if loopback and len(set(hosts)) == 1 and all(ifs == first for ifs in interfaces):
        return first[loopback][0], [loopback] * P
    # Several hosts, or the emulated cluster (one name, a network namespace per host): rank 0's address on a
    # network every rank has an address in, and each rank's interface there.
    for addr, mask in first.values():
        if addr.startswith("127."):
            continue
        net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
        ifnames = [next((name for name, (a, _) in ifs.items() if ipaddress.ip_address(a) in net), None)
                   for ifs in interfaces]
        if all(ifnames):
            return addr, ifnames  # type: ignore[return-value]
    raise NoCommonNetwork("no IPv4 network joins every rank; set GLOO_SOCKET_IFNAME to an interface every "
                          "rank has")


def rendezvous(comm: MPI.Intracomm) -> tuple[str, int]:
    """Rank 0's address and a free port on a network every rank reaches (collective).

    ``MASTER_ADDR`` (with ``MASTER_PORT`` if set) wins when set. Otherwise
    rank 0 chooses with :func:`choose_rendezvous` and each rank sets
    ``GLOO_SOCKET_IFNAME`` (unless set) to its interface on that network.

    Raises
    ------
    NoCommonNetwork
        On every rank, when rank 0 found no such network or no free port.
    """
    rank = comm.Get_rank()
    interfaces = comm.gather(ipv4_interfaces(), root=0)
    hosts = comm.gather(MPI.Get_processor_name(), root=0)
    plan: tuple[str, int, list[str] | None] | str | None = None
    if rank == 0:
        try:
            if os.environ.get("MASTER_ADDR"):
                address, ifnames = os.environ["MASTER_ADDR"], None
            else:
                address, ifnames = choose_rendezvous(interfaces, hosts, os.environ.get("GLOO_SOCKET_IFNAME"))
            port = int(os.environ.get("MASTER_PORT") or 0)
            if not port:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # free (again once closed)
                    s.bind((address if ifnames is not None else "", 0))
                    port = s.getsockname()[1]
            plan = (address, port, ifnames)
        except (NoCommonNetwork, OSError, ValueError) as exc:
            plan = str(exc)
    plan = comm.bcast(plan, root=0)
    if isinstance(plan, str):
        raise NoCommonNetwork(plan)
    address, port, ifnames = plan
    if ifnames is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", ifnames[rank])
    return address, port
