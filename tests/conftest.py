"""Settings for the whole test session, applied before any test module imports grpc."""

import os

# gRPC's C core logs connection events (GOAWAY on server shutdown) at INFO to
# stderr, in between pytest's progress dots; errors are still shown.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
