"""skills.sh-compatible registry client, safe installer, lock files and a private registry server."""
