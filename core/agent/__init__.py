"""The agent loop shared by the Manager and the Workers: messages → gateway → tools → results.

Agents speak plain OpenAI-compatible HTTP to the gateway with httpx (never litellm), so a
worker process stays small and starts fast.
"""
from hiclaw.agent.client import GatewayClient, GatewayError, ModelReply
from hiclaw.agent.loop import AgentLoop, AgentTurn

__all__ = ["AgentLoop", "AgentTurn", "GatewayClient", "GatewayError", "ModelReply"]
