"""Running a real federation: processes and services (`processes`), the hospital's SuperNode launcher
with its app checks (`supernode`), the app approval registry (`app_trust`), the Fleet-only gateway
(`gateway`) and the `fedhealth certs` / `fedhealth app` / `fedhealth audit` / `fedhealth deploy` commands
(`cli`)."""
