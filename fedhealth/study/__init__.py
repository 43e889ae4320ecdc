"""Stage 1, the study definition: the study config (`config`), the data schema every hospital shares
(`schema`, `builtin_schema`), a hospital's site policy (`policy`), the hospital-level DP rules (`hospital_dp`)
and the SecAgg+ parameters as a plain function of the study (`secagg`). Flower-free, no patient data."""
