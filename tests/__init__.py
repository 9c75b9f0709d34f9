"""jupyter-cc tests: unit/ runs in-process, integration/ starts real parts (sshd, swtpm, Jupyter, Hub)."""
