"""The scripts' contract: one-line errors and exit codes, output checks, locks, disk space, durations."""
