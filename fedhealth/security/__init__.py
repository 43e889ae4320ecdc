"""Deployment security: the study's TLS certificates and the hospitals' SuperNode authentication keys.

`fedhealth.security.certs` writes them in the formats Flower 1.41 reads and checks them before
Flower is launched (`init_study_pki`, `check_server_tls`, `check_node_keypair`, `CertificateError`);
`fedhealth.deployment.cli` is the `fedhealth certs` and `fedhealth audit` commands. Nothing is imported
here, so that the `fedhealth` command does not load `cryptography` (about 0.15 s) until it needs it.
"""
