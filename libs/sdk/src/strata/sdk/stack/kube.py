"""A real Kubernetes control plane on this machine, for the tests and the placement bench.

No Docker here, so no kind or k3s: etcd, kube-apiserver, kube-scheduler, optionally
kube-controller-manager, and kwok (fake nodes whose pods "run" without kubelets) run
as plain processes from the binaries ``make setup`` builds
(``deploy/local/kube/build.sh``, linked at ``.tools/kube/bin``). The API server is the
real one: token-file authentication, RBAC, admission and server-side validation all
behave as on a cluster, so what the Kubernetes provider and the manifests do against
it is what they do in production.

Every start begins from an empty etcd (the control plane is throw-away) on free
ports, writes a kubeconfig for an admin and one for the ``strata-provisioner`` user
(which, like in a cluster, may do only what RBAC grants it), and is ready when the
API server's ``/readyz`` answers. The processes cannot outlive the process that
started them (the kernel kills them when it dies), and :meth:`KubeControlPlane.stop`
ends them all.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from strata.core.settings import REPO_ROOT
from strata.sdk.stack.processes import proc_rss, terminate
from strata.sdk.stack.server import StartError

KUBE_BIN = REPO_ROOT / ".tools" / "kube" / "bin"
"""Where ``make setup`` links the control plane's binaries."""
BINARIES = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kwok")

ADMIN_USER = "strata-admin"
"""In ``system:masters``: may do anything, as a cluster admin may."""
PROVISIONER_USER = "strata-provisioner"
"""No group: it may do what a RoleBinding grants it and nothing else."""
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
"""A node annotated ``kwok.x-k8s.io/node: fake`` is one kwok plays the kubelet of."""
DEFAULT_DISABLED_ADMISSION = ("TaintNodesByCondition",)
"""Off by default: it taints every new node not-ready until the node-lifecycle controller
(kube-controller-manager) sees it Ready, which a plane without that controller never does."""
STOP_GRACE = 5.0
READY_POLL = 0.1

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
"""Loaded here, in the parent: a forked child may only call into it (a ``dlopen`` between
fork and exec can deadlock on a lock another thread held at the fork)."""

# kwok's stages (its "fast" set): a fake node turns Ready at once; a pod bound to one
# turns Running, a Job's pod then Succeeded, and a deleted pod goes away.
KWOK_STAGES = r"""
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-initialize}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type  | Quote }}
      {{ end }}
      addresses:
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
      allocatable:
      {{ with .status.allocatable }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      capacity:
      {{ with .status.capacity }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      nodeInfo:
        architecture: amd64
        kubeletVersion: fake
        operatingSystem: linux
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.phase, operator: In, values: [Pending]}
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-complete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.phase, operator: In, values: [Running]}
    - {key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
  next:
    delete: true
"""


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills it when the process that started it ends,
    so a test session killed outright leaves no control plane behind."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class KubeControlPlane:
    """etcd, kube-apiserver, kube-scheduler, optional kube-controller-manager, and kwok.

    ``home`` holds each process's log, the certificates, tokens and kubeconfigs (its
    etcd data is emptied at every start). The scheduler's client rate limit
    (``scheduler_qps``/``scheduler_burst``, Kubernetes' defaults 50/100) and the
    admission plugins turned off are parameters because the placement bench compares
    against a tuned kube-scheduler on nodes created Ready through the API.
    """

    def __init__(
        self,
        home: Path,
        *,
        binaries: Path = KUBE_BIN,
        scheduler: bool = True,
        controller_manager: bool = False,
        kwok: bool = True,
        disabled_admission_plugins: Sequence[str] = DEFAULT_DISABLED_ADMISSION,
        scheduler_qps: float = 50.0,
        scheduler_burst: int = 100,
        apiserver_args: Sequence[str] = (),
        ready_timeout: float = 60.0,
    ) -> None:
        self.home = home
        self.binaries = binaries
        self.run_scheduler = scheduler
        self.run_controller_manager = controller_manager
        self.run_kwok = kwok
        self.disabled_admission_plugins = tuple(disabled_admission_plugins)
        self.scheduler_qps = scheduler_qps
        self.scheduler_burst = scheduler_burst
        self.apiserver_args = tuple(apiserver_args)
        self.ready_timeout = ready_timeout
        self.admin_token = ""
        self.provisioner_token = ""
        self.port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.pki = home / "pki"
        self.kubeconfig = home / "admin.kubeconfig"
        """The admin's kubeconfig (``system:masters``)."""
        self.provisioner_kubeconfig = home / "provisioner.kubeconfig"
        """The ``strata-provisioner`` user's kubeconfig: RBAC decides what it may do."""

    @property
    def server(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The bundle the API server's self-signed serving certificate verifies against."""
        return self.pki / "apiserver.crt"

    def rss_bytes(self) -> int:
        """Resident memory of all its processes together."""
        return sum(proc_rss(process.pid) for process in self.processes.values())

    async def __aenter__(self) -> KubeControlPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every process and wait until the API server is ready; on failure, stop
        what started and raise :class:`StartError` naming the process and its log tail."""
        missing = [name for name in BINARIES if not (self.binaries / name).is_file()]
        if missing:
            raise StartError(
                f"the Kubernetes control plane's binaries are missing from {self.binaries} "
                f"({', '.join(missing)}); run `make setup`"
            )
        if shutil.which("openssl") is None:
            raise StartError("openssl is missing (it makes the service-account key)")
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._prepare()
        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        self._launch("etcd", self._etcd_command(etcd_port, peer_port))
        self._launch("kube-apiserver", self._apiserver_command(etcd_port))
        await self._wait_ready()
        self._write_kubeconfig(self.kubeconfig, self.admin_token)
        self._write_kubeconfig(self.provisioner_kubeconfig, self.provisioner_token)
        if self.run_scheduler:
            self._launch("kube-scheduler", self._scheduler_command())
        if self.run_controller_manager:
            self._write_root_ca()
            self._launch("kube-controller-manager", self._controller_manager_command())
        if self.run_kwok:
            self._launch("kwok", self._kwok_command())

    async def stop(self) -> None:
        """End every process (SIGTERM, then SIGKILL past a grace), newest first."""
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            await terminate(process.pid, signal.SIGTERM, STOP_GRACE)
            process.wait()

    def _prepare(self) -> None:
        for folder in ("etcd", "kwok"):
            shutil.rmtree(self.home / folder, ignore_errors=True)
        self.pki.mkdir(parents=True, exist_ok=True)
        (self.home / "kwok").mkdir()
        self.admin_token = secrets.token_hex(16)
        self.provisioner_token = secrets.token_hex(16)
        tokens = self.home / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{self.provisioner_token},{PROVISIONER_USER},{PROVISIONER_USER}\n"
        )
        tokens.chmod(0o600)
        key = self.pki / "service-account.key"
        if not key.exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
            )
        (self.home / "kwok-stages.yaml").write_text(KWOK_STAGES)
        (self.home / "scheduler.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self.kubeconfig),
                        "qps": self.scheduler_qps,
                        "burst": self.scheduler_burst,
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )

    def _launch(self, name: str, command: list[str]) -> None:
        """Start one process, its output appended to ``<home>/<name>.log``. The kernel's
        parent-death signal follows the thread that forks, so this runs on the event loop's
        thread (never in a worker thread, which may end before the session does)."""
        with (self.home / f"{name}.log").open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n==== starting {name} at {stamp} ====\n".encode())
            log.flush()
            self.processes[name] = subprocess.Popen(
                command,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KWOK_WORKDIR": str(self.home / "kwok")},
                preexec_fn=_die_with_parent,  # only prctl before exec: safe
            )

    def _etcd_command(self, port: int, peer_port: int) -> list[str]:
        client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        return [
            str(self.binaries / "etcd"),
            "--name=strata",
            f"--data-dir={self.home / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=strata={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_command(self, etcd_port: int) -> list[str]:
        key = self.pki / "service-account.key"
        command = [
            str(self.binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoints would point at the advertised address,
            # which may not be loopback; nothing here calls the API through that Service.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}",
            f"--cert-dir={self.pki}",
            f"--token-auth-file={self.home / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={key}",
            f"--service-account-signing-key-file={key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--profiling=false",
        ]
        if self.disabled_admission_plugins:
            command.append(
                f"--disable-admission-plugins={','.join(self.disabled_admission_plugins)}"
            )
        return [*command, *self.apiserver_args]

    def _scheduler_command(self) -> list[str]:
        return [
            str(self.binaries / "kube-scheduler"),
            f"--config={self.home / 'scheduler.yaml'}",
            "--secure-port=0",
        ]

    def _controller_manager_command(self) -> list[str]:
        return [
            str(self.binaries / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--service-account-private-key-file={self.pki / 'service-account.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
        ]

    def _kwok_command(self) -> list[str]:
        return [
            str(self.binaries / "kwok"),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.home / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--cidr=10.0.0.0/16",
        ]

    def _write_root_ca(self) -> None:
        """``pki/ca.crt``: the CA alone, the last certificate of the API server's self-signed
        bundle. The controller-manager publishes its root CA to every namespace and in a
        ClusterTrustBundle, which refuses a certificate that is not a CA."""
        bundle = self.ca_file.read_text()
        certificates = re.findall(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", bundle, re.DOTALL
        )
        if not certificates:
            raise StartError(f"{self.ca_file} holds no certificate")
        (self.pki / "ca.crt").write_text(certificates[-1])

    def _write_kubeconfig(self, path: Path, token: str) -> None:
        # JSON is YAML: every Kubernetes client reads it.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "strata-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {"name": "strata-test", "context": {"cluster": "strata-test", "user": "user"}}
            ],
            "current-context": "strata-test",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = "not answering yet"
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise StartError(
                        f"{name} exited with status {process.returncode} while starting:\n"
                        f"{self.log_tail(name)}"
                    )
            answer = await asyncio.to_thread(self._readyz)
            if answer is None:
                return
            last = answer
            if time.monotonic() > deadline:
                raise StartError(
                    f"kube-apiserver on {self.server} was not ready within "
                    f"{self.ready_timeout:.0f} s (last: {last}):\n{self.log_tail('kube-apiserver')}"
                )
            await asyncio.sleep(READY_POLL)

    def _readyz(self) -> str | None:
        """None when ``/readyz`` answers ok; else why not, in one line."""
        if not self.ca_file.exists():
            return "no serving certificate yet"
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2.0, context=context) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ssl.SSLError) as exc:
            return str(exc)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of one process's log."""
        try:
            text = (self.home / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
