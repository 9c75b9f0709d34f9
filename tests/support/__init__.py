"""What the tests share: the real parts they start (sshd, swtpm, a Jupyter server, a Hub),
builders of evidence, and local stand-ins for Azure."""
