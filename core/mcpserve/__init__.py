"""The team as an MCP server (``hiclaw mcp serve``, docs/mcp-serve.md).

Outside MCP clients — an IDE assistant, a desktop chat app — drive a *running* team with an
admin-issued token. The server is a client of the control API, like the admin's CLI
(:mod:`hiclaw.cli.up`'s ``control_request``): it holds no team state and can do only what the
admin can do from the command line.

- :mod:`~hiclaw.mcpserve.tokens`: the admin-issued tokens (stored hashed, checked on every call);
- :mod:`~hiclaw.mcpserve.team`: what the tools do, against the running team;
- :mod:`~hiclaw.mcpserve.server`: the official SDK's ``MCPServer`` with those tools, and the
  bearer guard of its Streamable HTTP app.
"""
