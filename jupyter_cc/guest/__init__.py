"""The guest agent: runs inside the confidential VM, next to the kernel it starts.

``python3 -m jupyter_cc.guest`` speaks JSON lines on stdin/stdout (one SSH channel, or pipes for
the ``local`` transport): it collects evidence bound to the client's nonce and the sshd host
key into a bundle (:mod:`jupyter_cc.guest.bundle`, from the sources in
:mod:`jupyter_cc.guest.collectors`), creates the kernel's HMAC key inside the TEE, starts
ipykernel on 127.0.0.1 and manages it (:mod:`jupyter_cc.guest.kernel`).
"""
