"""The worker runtime: the process `hiclaw worker run` that runs inside a sandbox.

It holds no secret of the team: only its own Matrix token, its gateway consumer token and its
control-API token, all revocable, all passed in ``HICLAW_WORKER_SPEC``. It never imports
litellm; it talks to the gateway with plain OpenAI-compatible HTTP.
"""
