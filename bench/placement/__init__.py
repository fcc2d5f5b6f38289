"""Placement benchmark: durable placements per second through the provisioner's real store
and placement round beside kube-scheduler binding pods to the same number of fake nodes,
and a seeded week of tasks placed on their requests or on their measured usage
(``python -m bench.placement``)."""
