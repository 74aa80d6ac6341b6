"""Operator tools, apart from the Pulumi program: the preflight doctor, wake, and the CI automation.

    python -m tools.doctor --stack aws-g5     will `pulumi up` get its GPU? (read-only)
    python -m tools.wake --stack aws-g5       start a stopped endpoint and wait for /ready
    python -m tools.ci ...                    per-PR environments with a TTL, and the reaper

They may import the program's pure modules (stacks.config, stacks.catalog, stacks.contract); the
program never imports them.
"""
