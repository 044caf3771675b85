"""The local disk: snapshots of folders, safe archive extraction, and atomic tree swaps."""
