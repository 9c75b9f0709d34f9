"""The host side of an attested kernel: SSH transport, the agent client, and judging evidence."""
