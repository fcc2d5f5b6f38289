"""kube-scheduler's side: 20,000 pending pods bound to fake nodes by the real scheduler.

A throw-away control plane (:class:`strata.sdk.stack.kube.KubeControlPlane`: etcd and
kube-apiserver, no controller-manager, no kwok, the ``TaintNodesByCondition``
admission plugin off) gets the nodes created Ready through the API, with the same
capacity as Strata's (and kubelet's default of 110 pods), so no not-ready taint is
added and no node-lifecycle controller ever changes them. The pods go into a
namespace of their own, requests as Strata's attempts, all of them created before
the scheduler runs: the scheduler then starts (its own process, the same binary
and configuration file as the plane's, with the client rate limit of the point
measured: 5,000 QPS and burst as Kubernetes' ``scheduler_perf`` uses, or the
defaults of 50 and 100) and finds the whole burst pending, as Strata's round finds
its queue. A watch on the namespace records when each pod's ``spec.nodeName``
appears; the rate is pods bound over the span from the first bind to the last
(the scheduler's start and its caches' first list are not counted against it).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import re
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.placement.plan import NODE_CAPACITY, REQUESTS
from bench.placement.strata_side import node_name
from strata.sdk.stack.kube import KubeControlPlane
from strata.sdk.stack.processes import terminate

CLIENTS = 32
"""Requests in flight while nodes and pods are created."""
PODS_PER_NODE = 110
BIND_TIMEOUT = 900.0
"""Seconds the scheduler gets to bind one burst before the run stops with an error."""
NODE_NAME = re.compile(rb'"nodeName":"[^"]+"')
PR_SET_PDEATHSIG = 1
POD_NAME = re.compile(rb'"metadata":\{"name":"([^"]+)"')


@dataclass(frozen=True)
class Binding:
    """One burst bound by kube-scheduler."""

    nodes: int
    pods: int
    qps: float
    burst: int
    bound: int
    seconds: float
    """First bind seen to the last one."""
    from_start: float
    """Scheduler process start to the last bind seen."""

    @property
    def rate(self) -> float:
        return self.bound / self.seconds if self.seconds > 0 else 0.0


class KubeSide:
    """One control plane (one fleet of nodes); pods are created per burst."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.plane = KubeControlPlane(home, scheduler=False, kwok=False)
        self._session: aiohttp.ClientSession | None = None
        self._bursts = 0
        self._nodes = 0
        self._version = "unknown"

    async def __aenter__(self) -> KubeSide:
        await self.plane.start()
        context = ssl.create_default_context(cafile=str(self.plane.ca_file))
        self._session = aiohttp.ClientSession(
            base_url=self.plane.server,
            headers={"Authorization": f"Bearer {self.plane.admin_token}"},
            connector=aiohttp.TCPConnector(ssl=context, limit=CLIENTS),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        await self.plane.stop()

    @property
    def version(self) -> str:
        """The API server's version, once nodes were created."""
        return self._version

    async def create_nodes(self, count: int) -> None:
        """``count`` nodes, Ready, with the bench's capacity, created through the API."""
        info = await self._json("GET", "/version")
        self._version = str(info.get("gitVersion", "unknown"))
        await self._many([("POST", "/api/v1/nodes", _node(node_name(i))) for i in range(count)])
        self._nodes = count

    async def bind_burst(self, pods: int, qps: float, burst: int) -> Binding:
        """Create ``pods`` pending pods, then start a scheduler and time it binding them."""
        self._bursts += 1
        namespace = f"burst-{self._bursts}"
        await self._json("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        await self._json(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"metadata": {"name": "default"}},
        )
        path = f"/api/v1/namespaces/{namespace}/pods"
        await self._many([("POST", path, _pod(i)) for i in range(pods)])
        version = await self._list_version(path)
        bound: dict[bytes, float] = {}
        watching = asyncio.create_task(self._watch_binds(path, version, pods, bound))
        # The watch starts from the list's version, so it misses no bind whenever it
        # connects; the pause keeps its connecting out of the scheduler's first second.
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        scheduler = self._start_scheduler(qps, burst)
        try:
            await asyncio.wait_for(watching, BIND_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"kube-scheduler bound {len(bound)} of {pods} pods in {BIND_TIMEOUT:.0f} s"
            ) from None
        finally:
            await terminate(scheduler.pid, signal.SIGTERM, 5.0)
            scheduler.wait()
        times = sorted(bound.values())
        return Binding(
            nodes=self._nodes,
            pods=pods,
            qps=qps,
            burst=burst,
            bound=len(bound),
            seconds=times[-1] - times[0],
            from_start=times[-1] - started,
        )

    def _start_scheduler(self, qps: float, burst: int) -> subprocess.Popen[bytes]:
        config = self.home / f"bench-scheduler-{self._bursts}.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self.plane.kubeconfig),
                        "qps": qps,
                        "burst": burst,
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        with (self.home / f"bench-scheduler-{self._bursts}.log").open("wb") as log:
            return subprocess.Popen(
                [
                    str(self.plane.binaries / "kube-scheduler"),
                    f"--config={config}",
                    "--secure-port=0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # only prctl before exec: safe
            )

    async def _watch_binds(
        self, path: str, version: str, pods: int, bound: dict[bytes, float]
    ) -> None:
        """Note the time each pod's ``spec.nodeName`` is first seen, until all are bound.

        The events are scanned as bytes, not parsed: the watcher shares the cores with
        the scheduler and the API server, and should take as little of them as it can.
        """
        assert self._session is not None
        url = f"{path}?watch=1&resourceVersion={version}&allowWatchBookmarks=false"
        while len(bound) < pods:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                resp.raise_for_status()
                async for line in resp.content:
                    if line.startswith(b'{"type":"ERROR"'):
                        raise RuntimeError(f"the pod watch failed: {line[:300]!r}")
                    if NODE_NAME.search(line) is None:
                        continue
                    name = POD_NAME.search(line)
                    if name is not None and name.group(1) not in bound:
                        bound[name.group(1)] = time.perf_counter()
                        if len(bound) >= pods:
                            return

    async def _list_version(self, path: str) -> str:
        """The resource version of a list of ``path``: a watch from it misses nothing."""
        listed = await self._json("GET", f"{path}?limit=1")
        metadata = listed.get("metadata")
        if not isinstance(metadata, dict) or "resourceVersion" not in metadata:
            raise RuntimeError(f"GET {path}: the list has no metadata.resourceVersion")
        return str(metadata["resourceVersion"])

    async def _many(self, calls: list[tuple[str, str, dict[str, object]]]) -> None:
        queue: asyncio.Queue[tuple[str, str, dict[str, object]]] = asyncio.Queue()
        for call in calls:
            queue.put_nowait(call)

        async def worker() -> None:
            while not queue.empty():
                method, path, body = queue.get_nowait()
                await self._json(method, path, body)

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))

    async def _json(
        self, method: str, path: str, body: dict[str, object] | None = None
    ) -> dict[str, object]:
        assert self._session is not None
        async with self._session.request(method, path, json=body) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:300]}")
            answer: dict[str, object] = json.loads(text)
            return answer


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills the scheduler when the bench dies, so an
    interrupted run leaves no scheduler behind (the plane's own processes do the same)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _node(name: str) -> dict[str, object]:
    capacity = {
        "cpu": f"{NODE_CAPACITY.cpu_millis}m",
        "memory": str(NODE_CAPACITY.memory_bytes),
        "pods": str(PODS_PER_NODE),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench"}
            ],
            "phase": "Running",
        },
    }


def _pod(index: int) -> dict[str, object]:
    asked = REQUESTS[index % len(REQUESTS)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{index:05d}"},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "task",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {
                        "requests": {
                            "cpu": f"{asked.cpu_millis}m",
                            "memory": str(asked.memory_bytes),
                        }
                    },
                }
            ],
        },
    }
