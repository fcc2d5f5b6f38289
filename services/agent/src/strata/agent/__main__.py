"""``python -m strata.agent``: a node agent that runs the provisioner's assignments.

It needs no server to be healthy: gRPC health is SERVING as soon as the process
runs, with or without a reachable provisioner. The agent's job is to keep trying
(:mod:`strata.agent.session` reconnects with backoff) and to keep running the
attempts it has; whether the node takes work is the provisioner's view of it
(``ListNodes``: READY or LOST), not something a health probe should restart the
agent over, since a restart would kill the attempts it runs. The blob store,
where attempts' output is kept, must answer at start; later outages only delay
uploads.

A wrong ``STRATA_AGENT_*`` setting refuses the start with one line naming it,
like the runtime's own settings.
"""

import sys

from strata.agent.session import provisioner_session
from strata.agent.settings import AgentSettings
from strata.core.errors import ConfigError
from strata.core.runtime import BLOBS, Loop, ServiceSpec, run_service
from strata.core.settings import load

EXIT_BAD_SETTINGS = 2
"""The runtime's exit code for a setting it refuses."""


def main() -> None:
    try:
        settings = load(AgentSettings)
    except ConfigError as exc:
        print(f"strata.agent refuses to start: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    spec = ServiceSpec(
        name="agent",
        degrades=(BLOBS,),
        loops=(Loop("provisioner-session", provisioner_session(settings)),),
    )
    run_service(spec)


if __name__ == "__main__":
    main()
