"""The coordinator side of the trust boundary: the Flower ServerApp (`app`), its strategies, the
server's half of SecAgg+ (`secure_aggregation`), attendance, and what it records in the run directory
(`recorder`, `observed`). Never imports the hospital side; what both share is `fedhealth.wire`."""
