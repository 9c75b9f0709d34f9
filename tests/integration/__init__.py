"""Tests with real parts: OpenSSH sshd on loopback, swtpm, Jupyter servers, nbclient kernels, JupyterHub."""
