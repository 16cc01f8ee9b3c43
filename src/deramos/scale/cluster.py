"""Which Ray cluster a run uses, and how it is reached.

    connect("local")                 a new cluster on this machine, listening on 127.0.0.1 only
    connect("auto")                  $RAY_ADDRESS, else the cluster `ray start` last recorded
                                     on this machine, else a new local one
    connect("10.0.0.5:6379")         a cluster's GCS address (`ray start --head` prints it)
    connect("ray://10.0.0.5:10001")  through Ray Client (deramos[ray] installs ray[client])

An address is checked before Ray is asked to use it: an unknown host, a port where nothing
listens, or a server that is not a Ray cluster is a ClusterError (one line) within about 20 s;
Ray itself would retry for minutes, printing warnings. A local cluster's processes listen on
127.0.0.1 only (Ray binds all interfaces unless its node address is the loopback one).
`LoopbackCluster` starts several raylets on loopback (the scale-out bench, the tests).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..runtime.errors import one_line

LOOPBACK = "127.0.0.1"
RESOLVE_TIMEOUT_S = 5.0     # the host name lookup
CONNECT_TIMEOUT_S = 5.0     # one TCP connection attempt, per address of the host (at most 2)
HANDSHAKE_TIMEOUT_S = 8.0   # the Ray GCS (or Ray Client server) answering on that port
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


class ClusterError(ValueError):
    """The cluster cannot be reached or used; the message is one line."""


@dataclass
class Connection:
    address: str                      # what the driver is connected to
    started: bool                     # this process started the cluster (ray.shutdown() stops it)
    resources: dict = field(default_factory=dict)
    new: bool = True                  # False: the process was connected already (ray.init earlier)

    def describe(self) -> str:
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        memory = self.resources.get("memory", 0) / 2**30
        kind = "new local cluster" if self.started else "cluster"
        return (f"{kind} at {self.address}: {cpus:g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")
                + f", {memory:.1f} GiB memory for tasks")


CLIENT_ATTEMPTS = 3


def connect(address: str = "auto", *, num_cpus: int | None = None) -> Connection:
    """Connect this process to a Ray cluster (see the module's docstring). A process already
    connected (ray.init called earlier) keeps its connection."""
    ray = _ray()
    if ray.is_initialized():
        quiet_console()
        return Connection(_current_address(ray), False, ray.cluster_resources(), new=False)
    source = None
    if address == "auto":
        address, source = _auto_address()
    if address == "local":
        start_local(num_cpus=num_cpus)
        return Connection(_current_address(ray), True, ray.cluster_resources())
    client = address.startswith("ray://")
    host, port = parse_address(address)
    check_reachable(host, port, address, source)
    if _is_loopback(host):
        loopback_only()     # or Ray rewrites 127.0.0.1 to this machine's network address
    _check_service(host, port, address, client)
    quiet_console()
    # Ray Client starts a server process per connection; on a loaded machine it can fail to come
    # up in time ("Initialization failure from server"), and a second attempt finds it ready.
    attempts = CLIENT_ATTEMPTS if client else 1
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():     # Ray Client warns on stderr before it raises
                warnings.simplefilter("ignore")
                ray.init(address=address, **({} if client else {"include_dashboard": False}), log_to_driver=False,
                         logging_level="ERROR")
            break
        except ConnectionAbortedError:
            if attempt + 1 == attempts:
                raise ClusterError(f"cannot connect to the Ray cluster at {address}: the Ray server ended the "
                                   f"connection ({attempts} attempts)") from None
            time.sleep(2.0)
        except Exception as error:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {describe_error(error)}") from None
    quiet_console()
    return Connection(address, False, ray.cluster_resources())


def start_local(num_cpus: int | None = None, memory: int | None = None, **init_args) -> None:
    """ray.init() of a new single-node cluster whose processes listen on 127.0.0.1 only."""
    ray = _ray()
    loopback_only()
    quiet_console()
    # A SIGTERM to a driver that started the cluster makes Ray wait up to 30 s for the node to
    # drain; our runner stops the cluster itself, at once.
    os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    from ray._private import ray_constants

    ray_constants.RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S = 0.0
    ray.init(address="local", num_cpus=num_cpus, _memory=memory, include_dashboard=False,
             _node_ip_address=LOOPBACK, log_to_driver=False, logging_level="ERROR", **init_args)
    quiet_console()


def loopback_only() -> None:
    """Ray processes started from now on, by this process or its children, take 127.0.0.1 as
    their node address, and so listen on loopback only. Ray offers this through
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine mode), read when ray is imported:
    the variable is set for child processes, the constant for this one."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def quiet_console() -> None:
    """Ray's and Ray Data's log lines stay in the session's log files, off this terminal: the
    runner prints its own progress and one line per failed row. Ray Data's console handler is
    removed (its file handlers stay); Ray core's console logger passes errors only."""
    import ray.data

    for name in ("ray.data", "ray"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
    logging.getLogger("ray").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, [IPv6]:PORT or ray://HOST:PORT; a ClusterError otherwise."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray {address}: expected local, auto, HOST:PORT (a cluster's GCS, e.g. "
                           f"head:6379) or ray://HOST:PORT (Ray Client, e.g. ray://head:10001)")
    return host, int(port)


def check_reachable(host: str, port: int, address: str, source: str | None = None) -> None:
    """A TCP connection to host:port, within RESOLVE_TIMEOUT_S + 2 * CONNECT_TIMEOUT_S."""
    where = f"the Ray cluster at {address}" + (f" ({source})" if source else "")
    addresses = _resolve(host, port, where)
    last = None
    for family, kind, proto, _, target in addresses[:2]:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.settimeout(CONNECT_TIMEOUT_S)
                probe.connect(target)
                return
        except OSError as error:
            last = error
    reason = ("no answer within {:g} s".format(CONNECT_TIMEOUT_S) if isinstance(last, (socket.timeout, TimeoutError))
              else "nothing listens on that port (connection refused)" if isinstance(last, ConnectionRefusedError)
              else one_line(getattr(last, "strerror", None) or last))
    raise ClusterError(f"cannot reach {where}: {reason}")


def _resolve(host: str, port: int, where: str) -> list:
    """getaddrinfo with a deadline (a resolver that does not answer would take 20 s or more);
    the lookup runs in a daemon thread, so one left hanging does not hold the exit."""
    found: list = []

    def lookup():
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            found.append(error)

    thread = threading.Thread(target=lookup, name="deramos-resolve", daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT_S)
    if not found:
        raise ClusterError(f"cannot reach {where}: the host name {host!r} did not resolve within "
                           f"{RESOLVE_TIMEOUT_S:g} s")
    if isinstance(found[0], OSError):
        raise ClusterError(f"cannot reach {where}: unknown host {host!r} "
                           f"({one_line(getattr(found[0], 'strerror', None) or found[0])})")
    return found[0]


_NOT_A_SERVICE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNKNOWN")


def _check_service(host: str, port: int, address: str, client: bool) -> None:
    """One cheap RPC (the GCS's GetClusterId; the Ray Client server's ping), what ray.init
    does first, but with a deadline. A cluster with Ray's token authentication (the default of
    clusters Ray 2.5x starts) answers UNAUTHENTICATED: the call is repeated with this
    machine's token ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), and token
    mode is turned on for ray.init when it is accepted."""
    kind = "Ray Client server" if client else "Ray cluster's GCS"
    try:
        import grpc
    except ImportError:
        if client:
            raise ClusterError(f"--ray {address} connects through Ray Client, which needs ray[client]: "
                               f"pip install 'deramos[ray]'") from None
        return      # ray without grpcio (deramos[ray] installs it): ray.init will tell
    code = _ping(grpc, host, port, client, ())
    if code == "UNAUTHENTICATED":
        token, where = _local_token()
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or token is None:
            raise ClusterError(f"{address} is a Ray cluster with token authentication and no token is set here: "
                               f"set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on its head)")
        code = _ping(grpc, host, port, client, (("authorization", f"Bearer {token}"),))
        if code == "UNAUTHENTICATED":
            raise ClusterError(f"{address} rejects this machine's Ray token ({where}): set RAY_AUTH_TOKEN to the "
                               f"cluster's token (`ray get-auth-token` on its head)")
        if code is None:
            _use_token_auth()
    if code in _NOT_A_SERVICE:
        reason = f"no answer within {HANDSHAKE_TIMEOUT_S:g} s" if code == "DEADLINE_EXCEEDED" else code
        hint = ("`ray start --head` starts one on port 10001" if client
                else "`ray start --head` prints the address to use")
        raise ClusterError(f"{address} answers, but not as a {kind} ({reason}); {hint}")


def _ping(grpc, host: str, port: int, client: bool, metadata: tuple) -> str | None:
    """None when the service answered, else the gRPC status code's name."""
    with grpc.insecure_channel(_grpc_target(host, port)) as channel:
        try:
            if client:
                from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

                ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                    ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING),
                    timeout=HANDSHAKE_TIMEOUT_S, metadata=metadata)
            else:
                from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(), timeout=HANDSHAKE_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as error:
            return error.code().name
    return None


def _local_token() -> tuple[str | None, str]:
    """This machine's Ray token, where Ray itself looks for it, and where it was found."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), os.path.join(os.path.expanduser("~"), ".ray", "auth_token")):
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except OSError:
                continue
            if token:
                return token, path
    return None, ""


def _use_token_auth() -> None:
    """RAY_AUTH_MODE=token for ray.init (Ray reads the token from the same places)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception:   # an older Ray without token authentication: nothing to turn on
        pass


def _grpc_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.")


def _auto_address() -> tuple[str, str | None]:
    """$RAY_ADDRESS, else the address `ray start` recorded on this machine, else "local".
    Ray's own "auto" would also attach to any Ray process it finds running here (someone
    else's ray.init() cluster); this does not."""
    from_env = os.environ.get("RAY_ADDRESS", "").strip()
    if from_env:
        return from_env, "from $RAY_ADDRESS"
    try:
        from ray._private.utils import get_ray_address_file, read_ray_address

        recorded = read_ray_address()
        if recorded:
            return recorded, f"recorded by `ray start` in {get_ray_address_file(None)}"
    except (ImportError, OSError):
        pass
    return "local", None


def _current_address(ray) -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:   # Ray Client has no GCS address on this side
        return "the connected cluster"


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray: pip install 'deramos[ray]'") from None
    return ray


def describe_error(error: BaseException) -> str:
    """A Ray exception as one line without its traceback or colour codes: the innermost
    cause's type and message (a RayTaskError wraps the exception a worker raised)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None or not isinstance(inner, BaseException):
            break
        error = inner
    text = _strip_ansi(str(error))
    first = text.strip().splitlines()[0] if text.strip() else ""
    return one_line(f"{type(error).__name__}: {first}" if first else type(error).__name__)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# --- several raylets on one machine, on loopback (the scale-out bench and the tests) --------------


class LoopbackCluster:
    """A head node and `nodes - 1` more raylets on this machine, every process on 127.0.0.1,
    each node with `cpus_per_node` CPUs; connects this process to it. What `ray start --head`
    and `ray start --address` would give on several machines, minus the network. Ray's own
    cluster_utils writes the address to /tmp/ray/ray_current_cluster, where any other Ray
    user of the machine would find it; this does not.

        with LoopbackCluster(nodes=2, cpus_per_node=1) as cluster:
            score_rows(rows, "out.jsonl", options)
    """

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, memory_per_node: int | None = None):
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {nodes}")
        self.nodes, self.cpus_per_node, self.memory_per_node = nodes, cpus_per_node, memory_per_node
        self._cluster = None

    def __enter__(self) -> "LoopbackCluster":
        ray = _ray()
        from ray import cluster_utils

        loopback_only()
        quiet_console()
        node_args = {"num_cpus": self.cpus_per_node, "node_ip_address": LOOPBACK, "include_dashboard": False}
        if self.memory_per_node:
            node_args["memory"] = self.memory_per_node
        with _no_address_file():
            self._cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(node_args))
            for _ in range(self.nodes - 1):
                self._cluster.add_node(**node_args)
        self._cluster.wait_for_nodes()
        ray.init(address=self._cluster.address, log_to_driver=False, logging_level="ERROR")
        quiet_console()
        return self

    @property
    def address(self) -> str:
        return self._cluster.address

    def processes(self) -> list[int]:
        """Process ids of every node's Ray processes (GCS, raylets, agents; not the workers)."""
        nodes = [self._cluster.head_node, *self._cluster.worker_nodes]
        return [info.process.pid for node in nodes for infos in node.all_processes.values() for info in infos]

    def __exit__(self, *exc) -> None:
        ray = _ray()
        ray.shutdown()
        if self._cluster is not None:
            with _no_address_file():
                self._cluster.shutdown()


@contextmanager
def _no_address_file():
    """cluster_utils writes its address to /tmp/ray/ray_current_cluster when it starts, and
    deletes that file when it stops, whoever wrote it: neither, while this runs."""
    from ray._common import utils as common_utils
    from ray._private import utils as private_utils

    saved = private_utils.write_ray_address, common_utils.reset_ray_address
    private_utils.write_ray_address = common_utils.reset_ray_address = lambda *args, **kwargs: None
    try:
        yield
    finally:
        private_utils.write_ray_address, common_utils.reset_ray_address = saved
