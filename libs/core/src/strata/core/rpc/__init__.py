"""gRPC for Strata services: server and channel builders, auth, and the error mapping.

Named ``rpc`` rather than ``grpc`` so that reading ``import grpc`` never needs a second look.
"""

from strata.core.rpc.auth import ADMIN_ROLE, Principal, current_principal
from strata.core.rpc.client import channel
from strata.core.rpc.server import RpcServer, Service
from strata.core.rpc.status import field_violations

__all__ = [
    "ADMIN_ROLE",
    "Principal",
    "RpcServer",
    "Service",
    "channel",
    "current_principal",
    "field_violations",
]
