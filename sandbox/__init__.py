"""Sandbox backends that run worker processes in isolation: bwrap (default on Linux), process, docker, kubernetes."""
