-- Nodes the provisioner asked a provider of compute for: which class and provider,
-- what the provider last said about it, and since when it has had no placement
-- (what scale-down waits on). A row lives from the start request until the node
-- is stopped or lost; its agent's row in nodes appears once it registers.
CREATE TABLE provisioned_nodes (
    node_id text PRIMARY KEY,
    node_class text NOT NULL,
    provider text NOT NULL,
    message text NOT NULL DEFAULT '',  -- the provider's word, e.g. why a pod is Pending
    requested_at timestamptz NOT NULL DEFAULT now(),
    idle_since timestamptz             -- NULL while the node has placements
);
CREATE INDEX provisioned_nodes_by_class ON provisioned_nodes (node_class);
