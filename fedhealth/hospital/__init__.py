"""The hospital side of the trust boundary: the Flower ClientApp a hospital runs (`app`) and its mods in
chain order (`guard`, `audit_mod`, `secure_aggregation`, `hospital_noise`), with the node config keys a
hospital sets (`node_config`). Never imports the coordinator; what both sides share is `fedhealth.wire`."""
