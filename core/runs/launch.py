"""`python -m core.runs.launch [torchrun options] -m core.train ...`: torchrun for one machine, listening on loopback only.

`torchrun --standalone` hosts its rendezvous store (a c10d TCPStore) and the store its workers share, and PyTorch's
TCPStore listens on every address of the machine ("::") whatever host name it is given: anyone on the network could
connect to a training job's store and write into it. A one-machine run needs nothing from the network, so this
launcher binds each store's listening socket to 127.0.0.1 itself and hands it to TCPStore (its `master_listen_fd`),
gives the rendezvous the loopback endpoint, and points Gloo and NCCL at the loopback interface (unless the
environment already names one). Then it runs torchrun's own entry point in this process, with the same options.
Several machines (`--nnodes` > 1, the README's recipe) are a plain torchrun's job, not this one's.
"""
from __future__ import annotations

import os
import runpy
import socket
import sys

LOOPBACK = "127.0.0.1"


def loopback_interface() -> str | None:
    """The name of the interface that holds 127.0.0.1 ("lo" on Linux, "lo0" on macOS), or None."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
            return name
    return None


def loopback_store_class():
    """TCPStore whose server listens on 127.0.0.1 only (a subclass: isinstance checks on TCPStore still hold)."""
    from torch.distributed import TCPStore

    class LoopbackTCPStore(TCPStore):
        def __init__(self, host_name, port, *args, **kwargs):
            names = ("world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant", "master_listen_fd",
                     "use_libuv")
            kwargs.update(zip(names, args))  # the positional form torch's own callers sometimes use
            if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind((LOOPBACK, int(port)))
                    listener.listen(socket.SOMAXCONN)
                except OSError:
                    listener.close()
                    raise
                port = listener.getsockname()[1]
                kwargs["master_listen_fd"] = listener.detach()  # the store owns the socket from here on
            super().__init__(host_name, port, **kwargs)

    return LoopbackTCPStore


def install() -> None:
    """Every TCPStore server torchrun's agent creates listens on loopback; its workers' Gloo and NCCL use it too."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

    store = loopback_store_class()
    dist.TCPStore = store  # dynamic_rendezvous and elastic.utils call dist.TCPStore
    c10d_rendezvous_backend.TCPStore = store  # imported by name there
    interface = loopback_interface()
    if interface:
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):  # the workers inherit these
            os.environ.setdefault(name, interface)


def torchrun_args(argv: list[str]) -> list[str]:
    """torchrun's options for one machine on loopback: --standalone's rendezvous, at 127.0.0.1 instead of
    "localhost" (which may resolve to ::1, where nothing listens)."""
    if "--standalone" in argv:
        i = argv.index("--standalone")
        argv = [*argv[:i], "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{LOOPBACK}:0", "--nnodes", "1",
                "--rdzv-id", f"caption-{os.getpid()}", *argv[i + 1:]]
    return argv


def main(argv: list[str] | None = None) -> None:
    install()
    sys.argv = ["torchrun", *torchrun_args(list(sys.argv[1:] if argv is None else argv))]
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
