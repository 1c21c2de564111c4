"""The human review queue: ``queue`` (leases, decisions, overlap, agreement, audit) and its web app
(``app``, ``users``, templates and static files)."""
